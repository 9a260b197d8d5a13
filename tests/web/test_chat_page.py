"""The chat page at `/`, in headless Chromium driven by Playwright (the system's Chromium; npm
`playwright-core` installed into tests/web/node_modules by scripts/install.sh).

The page streams its replies from the server's own API: what it shows must equal what the API
answers for the same conversation, and must have grown piece by piece as the reply streamed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from llm_deploy import AsyncEngine
from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.serve.server import ServerThread, create_app

HERE = Path(__file__).parent


@pytest.mark.slow
def test_chat_page_streams_the_apis_reply(tiny_artifact):
    engine = AsyncEngine(load_artifact(tiny_artifact), num_pages=32)
    with engine, ServerThread(create_app(engine)) as server:
        page = httpx.get(server.url + "/").text
        assert "http://" not in page.replace(server.url, "") and "https://" not in page  # no outside assets
        settings = {"temperature": "0", "max-tokens": "12"}
        turns = ["Hello, who are you?", "Tell me more."]
        proc = subprocess.run(
            ["node", str(HERE / "chat_page.mjs"), server.url, json.dumps(settings), *turns],
            capture_output=True, text=True, timeout=180, cwd=HERE,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        shown = json.loads(proc.stdout.strip().splitlines()[-1])

        assert shown["model"] == "llama-tiny" and shown["errors"] == [] and shown["failures"] == []
        history: list[dict] = []
        for turn, reply in zip(turns, shown["replies"], strict=True):
            history.append({"role": "user", "content": turn})
            body = {"messages": history, "temperature": 0, "max_tokens": 12}
            expected = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
            text = expected["choices"][0]["message"]["content"]
            assert reply["text"] == text and reply["finish"] == expected["choices"][0]["finish_reason"]
            assert reply["updates"] > 1, reply  # it streamed
            assert "12 tokens" in reply["meta"]
            history.append({"role": "assistant", "content": text})
