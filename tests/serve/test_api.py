"""The Python API: OpenAI-shaped objects over the engine, sync and async, on llama-tiny.

Greedy text through the API is held to `serve.generate` on the same prompt ids; the JSON of every
object is checked field by field against the OpenAI shape.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys

import pytest

from llm_deploy import AsyncEngine, Engine
from llm_deploy.kv_cache import PagedKVCache
from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.generate import generate
from llm_deploy.serve.sampler import SamplingParams, SamplingParamsError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def tiny(tiny_artifact):
    return load_artifact(tiny_artifact)


@pytest.fixture
def engine(tiny):
    with Engine(tiny, num_pages=64) as e:
        yield e


def alone(artifact, ids: list[int], **params) -> str:
    return "".join(generate(ModelRunner(artifact), artifact.tokenizer, ids, SamplingParams(**params)))


def chat_ids(tiny, messages=MESSAGES) -> list[int]:
    return tiny.tokenizer.apply_chat_template(messages)


def test_import_is_light_and_engine_is_exported():
    code = (
        "import sys, llm_deploy\n"
        "assert not any(m.startswith(('llm_deploy.serve', 'numpy')) for m in sys.modules), sys.modules\n"
        "from llm_deploy import Engine, AsyncEngine\n"
        "print(Engine.__module__, AsyncEngine.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["llm_deploy.serve.api", "AsyncEngine"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import llm_deploy

        llm_deploy.Nope  # noqa: B018


def test_chat_completion_has_the_openai_shape(tiny, engine):
    resp = engine.chat.completions.create(messages=MESSAGES, temperature=0, max_tokens=8, ignore_eos=True)
    d = json.loads(json.dumps(resp.to_dict()))
    assert d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    assert isinstance(d["created"], int) and d["model"] == "llama-tiny"
    (choice,) = d["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    ids = chat_ids(tiny)
    assert choice["message"]["content"] == alone(tiny, ids, temperature=0, max_tokens=8, ignore_eos=True)
    usage = d["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        len(ids),
        8,
        len(ids) + 8,
    )
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["extra"]["ttft_s"] > 0 and usage["extra"]["decode_tokens_per_s"] > 0
    assert resp.choices[0].message.content == choice["message"]["content"]  # attribute access as in openai


def test_chat_stream_adds_up_to_the_completion(engine):
    kw = dict(messages=MESSAGES, temperature=0, max_tokens=10, ignore_eos=True)
    whole = engine.chat.completions.create(**kw).choices[0].message.content
    chunks = [
        c.to_dict()
        for c in engine.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    ]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == whole
    assert [c["choices"][0]["finish_reason"] for c in content][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completions_text_and_token_prompts_and_stream(tiny, engine):
    kw = dict(temperature=0, max_tokens=7, ignore_eos=True)
    resp = engine.completions.create(prompt="Once upon a time", **kw)
    ids = tiny.tokenizer.encode("Once upon a time")
    d = resp.to_dict()
    assert d["object"] == "text_completion" and d["id"].startswith("cmpl-")
    assert d["choices"][0]["text"] == alone(tiny, ids, **kw)
    assert engine.completions.create(prompt=ids, **kw).choices[0].text == d["choices"][0]["text"]
    streamed = list(engine.completions.create(prompt="Once upon a time", stream=True, **kw))
    assert all(c.object == "text_completion" for c in streamed)
    assert "".join(c.choices[0].text for c in streamed) == d["choices"][0]["text"]
    assert streamed[-1].choices[0].finish_reason == "length"


def test_stop_string_from_the_api(engine):
    kw = dict(prompt="abc", temperature=0, max_tokens=30, ignore_eos=True)
    text = engine.completions.create(**kw).choices[0].text
    i = next(i for i in range(3, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    stop = text[i : i + 2]
    choice = engine.completions.create(stop=[stop], **kw).choices[0]
    assert choice.text == text[: text.index(stop)]
    assert (choice.finish_reason, choice.stop_reason) == ("stop", stop)


def test_n_choices_and_logprobs(engine):
    resp = engine.chat.completions.create(
        messages=MESSAGES, n=2, seed=5, temperature=1.0, max_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=3
    )  # fmt: skip
    assert [c.index for c in resp.choices] == [0, 1] and resp.usage.completion_tokens == 12
    for c in resp.choices:
        lps = c.logprobs.content
        assert len(lps) == 6
        assert b"".join(bytes(t.bytes) for t in lps).decode("utf-8", "replace") == c.message.content
        for t in lps:
            tops = [x.logprob for x in t.top_logprobs]
            assert len(tops) == 3 and tops == sorted(tops, reverse=True) and t.logprob <= tops[0] + 1e-12
    again = engine.chat.completions.create(
        messages=MESSAGES, n=2, seed=5, temperature=1.0, max_tokens=6, ignore_eos=True
    )  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]

    greedy = engine.completions.create(prompt="xyz", temperature=0, max_tokens=5, ignore_eos=True, logprobs=2)
    lp = greedy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(
        1 <= len(top) <= 2 and max(top.values()) == pytest.approx(v)
        for top, v in zip(lp.top_logprobs, lp.token_logprobs)
    )
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_defaults_come_from_the_artifact(tiny, engine):
    assert engine.default_sampling == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}
    resp = engine.chat.completions.create(messages=MESSAGES, ignore_eos=True)
    # max_tokens 256 is capped by the 256-token context window.
    assert resp.usage.completion_tokens == 256 - len(chat_ids(tiny))
    assert resp.choices[0].finish_reason == "length"
    short = engine.chat.completions.create(messages=MESSAGES, max_completion_tokens=3, ignore_eos=True)
    assert short.usage.completion_tokens == 3


def test_bad_requests_are_clear_errors(engine):
    create = engine.chat.completions.create
    with pytest.raises(TypeError, match="frequency_penaltyy"):
        create(messages=MESSAGES, frequency_penaltyy=1.0)
    with pytest.raises(ValueError, match="tools"):
        create(messages=MESSAGES, tools=[{"type": "function"}])
    with pytest.raises(SamplingParamsError, match="temperature"):
        create(messages=MESSAGES, temperature=5.0)
    with pytest.raises(ValueError, match="messages is empty"):
        create(messages=[])
    with pytest.raises(ValueError, match="one prompt per request"):
        engine.completions.create(prompt=["a", "b"])
    with pytest.raises(ValueError, match="echo"):
        engine.completions.create(prompt="a", echo=True)
    assert engine.core.wait_idle(10) and engine.stats().finished_requests == 0


def test_closing_a_stream_cancels_its_request(engine):
    chunks = engine.completions.create(prompt="go", max_tokens=200, ignore_eos=True, stream=True)
    next(chunks), next(chunks)
    chunks.close()
    assert engine.core.wait_idle(10)
    stats = engine.stats()
    assert stats.aborted_requests == 1 and stats.generated_tokens < 200
    assert stats.pages_used == stats.prefix_cache_pages
    unread = engine.completions.create(prompt="go", max_tokens=200, ignore_eos=True, stream=True)
    del unread  # created, never iterated
    assert engine.core.wait_idle(10) and engine.stats().aborted_requests == 2


def test_async_engine(tiny):
    prompts = ["a", "bb bb", "ccc ccc ccc", "dddd"]
    kw = dict(temperature=0, max_tokens=8, ignore_eos=True)
    expected = [alone(tiny, tiny.tokenizer.encode(p), **kw) for p in prompts]

    async def main():
        async with AsyncEngine(tiny, num_pages=64) as e:
            together = await asyncio.gather(*(e.completions.create(prompt=p, **kw) for p in prompts))
            assert [r.choices[0].text for r in together] == expected
            stream = await e.chat.completions.create(messages=MESSAGES, stream=True, **kw)
            chunks = [c async for c in stream]
            whole = await e.chat.completions.create(messages=MESSAGES, **kw)
            assert (
                "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
            )

            # A task cancelled mid-stream, and one cancelled while awaiting a whole completion.
            started = asyncio.Event()

            async def consume():
                async for _ in await e.completions.create(
                    prompt="go", max_tokens=240, ignore_eos=True, stream=True
                ):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(e.core.wait_idle, 10)
            tokens_before = e.stats().generated_tokens
            task = asyncio.create_task(e.completions.create(prompt="go", max_tokens=240, ignore_eos=True))
            while e.stats().generated_tokens == tokens_before:
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(e.core.wait_idle, 10)
            stats = e.stats()
            assert stats.aborted_requests == 2 and stats.pages_used == stats.prefix_cache_pages
            return stats

    assert asyncio.run(main()).finished_requests == len(prompts) + 2


def test_engine_from_a_folder_sizing_and_lifetime(tiny_artifact, tiny):
    per_page = PagedKVCache.bytes_per_page(2, 2, 16, 16, "float32")
    with Engine(str(tiny_artifact), kv_cache_bytes=10 * per_page + 1) as e:
        assert e.model == "llama-tiny" and e.stats().num_pages == 10
    assert Engine(tiny).stats().num_pages == 4 * 256 // 16  # default: four context windows
    with pytest.raises(ValueError, match="device 'webgpu'"):
        Engine(tiny, device="webgpu")
    with pytest.raises(ValueError, match="not both"):
        Engine(tiny, num_pages=4, kv_cache_bytes=per_page)

    e = Engine(tiny)
    thread = e.core._thread
    del e
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()  # a dropped engine stops its scheduler
