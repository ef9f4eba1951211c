"""The Ollama native dialect (`/api/chat` NDJSON) against a loopback fake."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import ImagePart, ProviderProfile, TextPart, ToolCallPart, ToolResultPart
from opencode_agent.core.providers.base import ChatMessage, ChatRequest, Finish, TextDelta, ToolCallReady, UsageReport
from opencode_agent.core.providers.http import RetryPolicy, create_session
from opencode_agent.core.providers.ollama import OllamaProvider
from opencode_agent.core.tools import ToolSpec
from opencode_agent.tests.fakes.llm_servers import (  # noqa: F401  (fixture)
    collect, http, read_mode,
    FakeToolCall, Fail, RecordingSleep, Reply, Stream, closed_port, joined, fake_llm, ollama_lines,
)

TOOL = ToolSpec(name="queue_prompt", description="Queue a workflow.", parameters={"type": "object", "properties": {}})


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def provider(base_url: str, http: Any, sleep: RecordingSleep, *, extra: dict[str, Any] | None = None,
             loader: Any = None, attempts: int = 3) -> OllamaProvider:
    profile = ProviderProfile(name="local", kind="ollama", base_url=base_url, extra=extra or {})
    return OllamaProvider(profile, None, http, loader, retry=RetryPolicy(max_attempts=attempts, sleep=sleep))


def ask(*messages: ChatMessage, tools: list[ToolSpec] | None = None, **kw: Any) -> ChatRequest:
    return ChatRequest(model="qwen3:8b", system="Be brief.",
                       messages=list(messages) or [ChatMessage("user", [TextPart(text="hi")])], tools=tools or [], **kw)


pytestmark = pytest.mark.usefixtures("read_mode")  # every test here runs with both readers


async def failure(p: OllamaProvider, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(p, request)
    return info.value


async def test_text_usage_and_request_body(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Reply(text="Hello from llama", input_tokens=26, output_tokens=4))
    p = provider(fake_llm.url, http, sleep, extra={"keep_alive": "30m", "options": {"num_ctx": 16384}})
    events = await collect(p, ask(temperature=0.1, max_tokens=200))
    assert joined(events) == [TextDelta("Hello from llama"), UsageReport(26, 4), Finish("stop")]
    sent = fake_llm.last
    assert sent.path == "/api/chat" and "Authorization" not in sent.headers
    assert sent.body == {
        "model": "qwen3:8b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "options": {"num_ctx": 16384, "temperature": 0.1, "num_predict": 200},
        "keep_alive": "30m",
    }


async def test_tool_calls_get_ids_and_finish_reason(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Reply(tool_calls=[FakeToolCall("queue_prompt", {"steps": 20}), FakeToolCall("queue_prompt", {})]))
    events = await collect(provider(fake_llm.url, http, sleep), ask(tools=[TOOL]))
    calls = [e for e in events if isinstance(e, ToolCallReady)]
    assert [(c.name, c.arguments) for c in calls] == [("queue_prompt", {"steps": 20}), ("queue_prompt", {})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert events[-2:] == [UsageReport(11, 7), Finish("tool_calls")]
    assert fake_llm.last.body["tools"] == [{"type": "function", "function": {
        "name": "queue_prompt", "description": "Queue a workflow.", "parameters": {"type": "object", "properties": {}}}}]


async def test_history_with_images_and_tool_results(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    async def loader(part: ImagePart) -> tuple[bytes, str]:
        if part.filename == "gone.png":
            raise FileNotFoundError(part.filename)
        return part.filename.encode(), "image/png"

    fake_llm.push(Reply(text="ok"))
    await collect(provider(fake_llm.url, http, sleep, loader=loader), ask(
        ChatMessage("user", [TextPart(text="see"), ImagePart(filename="a.png"), ImagePart(filename="gone.png")]),
        ChatMessage("assistant", [TextPart(text="Queuing."), ToolCallPart(id="c1", name="queue_prompt", arguments={"n": 1})]),
        ChatMessage("user", [ToolResultPart(tool_call_id="c1", name="queue_prompt", content="queued",
                                            images=[ImagePart(filename="out.png")])]),
        tools=[TOOL],
    ))
    assert fake_llm.last.body["messages"][1:] == [
        {"role": "user", "content": "see\n\n[image gone.png unavailable]", "images": [base64.b64encode(b"a.png").decode()]},
        {"role": "assistant", "content": "Queuing.", "tool_calls": [{"function": {"name": "queue_prompt", "arguments": {"n": 1}}}]},
        {"role": "tool", "content": "queued", "tool_name": "queue_prompt"},
        {"role": "user", "content": "", "images": [base64.b64encode(b"out.png").decode()]},
    ]


async def test_missing_done_line_is_an_error(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Stream(ollama_lines(Reply(text="cut off here"))[:-1], content_type="application/x-ndjson"))
    err = await failure(provider(fake_llm.url, http, sleep), ask())
    assert err.message == 'local: the stream ended before the final "done" line'
    assert len(fake_llm.requests) == 1


async def test_error_line_and_corrupt_line(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    lines = ollama_lines(Reply(text="a b"))
    fake_llm.push(Stream(lines[:1] + [json.dumps({"error": "an error was encountered while running the model"}).encode() + b"\n"]))
    err = await failure(provider(fake_llm.url, http, sleep), ask())
    assert err.message == "local: an error was encountered while running the model" and not err.retryable
    fake_llm.push(Stream(lines[:1] + [b'{"model": "x", "mess\n']))
    assert (await failure(provider(fake_llm.url, http, sleep), ask())).code == "provider_stream_broken"


async def test_model_not_found_http_error(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Fail(404, {"error": "model \"qwen3:8b\" not found, try pulling it first"}))
    err = await failure(provider(fake_llm.url, http, sleep), ask())
    assert err.message == 'local: model "qwen3:8b" not found, try pulling it first (HTTP 404)'
    assert err.http_status == 404 and not err.retryable


async def test_stalled_stream(fake_llm: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Stream(ollama_lines(Reply(text="a b c")), content_type="application/x-ndjson", stall_after=1))
    session = create_session(sock_read=0.3)
    try:
        err = await failure(provider(fake_llm.url, session, sleep), ask())
    finally:
        await session.close()
    assert err.message == "local: stream stalled: no data for 0.3s"


async def test_read_timeout_from_profile_extra(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    # A big local model may need longer than the shared default to load: the profile can say so.
    fake_llm.push(Stream(ollama_lines(Reply(text="a")), content_type="application/x-ndjson", stall_after=0))
    err = await failure(provider(fake_llm.url, http, sleep, extra={"read_timeout": 0.2}), ask())
    assert err.message == "local: stream stalled: no data for 0.2s"


async def test_refused_connection(http: Any, sleep: RecordingSleep) -> None:
    err = await failure(provider(f"http://127.0.0.1:{closed_port()}", http, sleep, attempts=2), ask())
    assert err.code == "provider_unreachable" and len(sleep.waits) == 1


async def test_list_models_from_tags(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    models = await provider(fake_llm.url, http, sleep).list_models()
    assert [m.id for m in models] == ["llama3.1:8b", "qwen3:8b"]
    assert fake_llm.last.path == "/api/tags"
