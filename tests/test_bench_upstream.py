"""The relay benchmark's fake upstream speaks OpenAI's exact streaming wire format.

It is a hand-written `asyncio.Protocol` (so it takes little CPU from the servers measured), so
its stream is checked here with the official `openai` SDK: chunk shapes, finish reason, usage,
`[DONE]`, keep-alive reuse for the next request, and the model list.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.upstream")


async def test_stream_parses_with_the_openai_sdk(upstream: Any) -> None:
    stats = upstream._Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: upstream._Connection(0.01, 500.0, 5, stats), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
    try:
        for round_ in range(2):
            t0 = loop.time()
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True})
            texts, finish, usage = [], None, None
            async for chunk in stream:
                if chunk.choices:
                    if chunk.choices[0].delta.content:
                        texts.append(chunk.choices[0].delta.content)
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage
            assert len(texts) == 5, texts
            assert [int(t.split("|")[1]) for t in texts] == [0, 1, 2, 3, 4]
            sent = [s for t in texts for s in upstream.tokens_sent_at(t)]
            arrived = upstream.request_arrived_at(texts[0])
            assert upstream.tokens_sent_at(texts[0] + texts[1]) == sent[:2]  # two tokens joined by a relay
            assert upstream.request_arrived_at(texts[0] + texts[1]) == arrived
            # Paced on an absolute schedule: token i no sooner than ttft + i/rate after the request.
            assert all(s >= arrived + 0.01 + i / 500 for i, s in enumerate(sent)), (arrived, sent)
            assert loop.time() - t0 >= 0.01 + 4 / 500
            assert finish == "stop"
            assert usage is not None and usage.completion_tokens == 5 and usage.total_tokens == 25
        assert stats.requests == 2 and len(stats.peers) == 1  # the second request reused the connection
        assert len(stats.late) == 2
        models = await client.models.list()
        assert [m.id for m in models.data] == ["m"]
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
