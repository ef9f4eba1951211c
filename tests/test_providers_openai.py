"""The OpenAI Chat Completions dialect against llmock and against our own loopback fake."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from llmock.scenarios import Reply as MockReply
from llmock.scenarios import ToolCall as MockToolCall

from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import ImagePart, ProviderProfile, TextPart, ToolCallPart, ToolResultPart
from opencode_agent.core.providers.base import (
    ChatMessage, ChatRequest, Finish, TextDelta, ToolCallReady, UsageReport,
)
from opencode_agent.core.providers.http import RetryPolicy, create_session
from opencode_agent.core.providers.openai import OpenAIProvider
from opencode_agent.core.tools import ToolSpec
from opencode_agent.tests.fakes.llm_servers import (  # noqa: F401  (fixture)
    collect, http, read_mode,
    FakeToolCall, Fail, RecordingSleep, Reply, Stream, closed_port, joined, fake_llm, gemini_chunks, openai_chunks, sse,
)

KEY = "sk-test-0123456789abcdefSECRET"
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def provider(base_url: str, http: Any, sleep: RecordingSleep, *, attempts: int = 3, loader: Any = None,
             extra: dict[str, Any] | None = None, name: str = "test") -> OpenAIProvider:
    profile = ProviderProfile(name=name, kind="openai", base_url=base_url, extra=extra or {})
    return OpenAIProvider(profile, KEY, http, loader, retry=RetryPolicy(max_attempts=attempts, sleep=sleep))


def ask(text: str = "hi", *, tools: list[ToolSpec] | None = None, model: str = "gpt-test") -> ChatRequest:
    return ChatRequest(model=model, system="You are terse.", messages=[ChatMessage("user", [TextPart(text=text)])],
                       tools=tools or [])


pytestmark = pytest.mark.usefixtures("read_mode")  # every test here runs with both readers


async def failure(p: OpenAIProvider, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(p, request)
    return info.value


# --------------------------------------------------------------------------- against llmock


async def test_llmock_plain_text_and_usage(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.reply("Hello from the mock")
    events = await collect(provider(llmock.base_url("openai"), http, sleep), ask())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the mock"
    assert isinstance(events[-2], UsageReport) and events[-2].input_tokens > 0 and events[-2].output_tokens > 0
    assert events[-1] == Finish("stop")
    body = llmock.last_request.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]


async def test_llmock_single_tool_call(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.call_tool("get_weather", {"city": "Paris", "days": [1, 2, 3]})
    events = await collect(provider(llmock.base_url("openai"), http, sleep), ask(tools=[WEATHER]))
    calls = [e for e in events if isinstance(e, ToolCallReady)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris", "days": [1, 2, 3]})]
    assert calls[0].id.startswith("call_")
    assert events[-1] == Finish("tool_calls")
    assert llmock.last_request.body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city.", "parameters": WEATHER.parameters}}


async def test_llmock_parallel_tool_calls(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.add(MockReply(tool_calls=(MockToolCall("get_weather", {"city": "Paris"}),
                                     MockToolCall("get_weather", {"city": "Oslo, Norway"}))))
    events = await collect(provider(llmock.base_url("openai"), http, sleep), ask(tools=[WEATHER]))
    calls = [e for e in events if isinstance(e, ToolCallReady)]
    assert [c.arguments for c in calls] == [{"city": "Paris"}, {"city": "Oslo, Norway"}]
    assert len({c.id for c in calls}) == 2
    assert events[-1] == Finish("tool_calls")


async def test_llmock_429_honours_retry_after(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.rate_limit(times=2, retry_after=0.25).reply("finally")
    events = await collect(provider(llmock.base_url("openai"), http, sleep), ask())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "finally"
    assert sleep.waits == [0.25, 0.25]
    assert [r.status for r in llmock.requests] == [429, 429, 200]


async def test_llmock_500_retried_then_reported(llmock: Any, http: Any, sleep: RecordingSleep, caplog: Any) -> None:
    llmock.outage(status=500)
    err = await failure(provider(llmock.base_url("openai"), http, sleep, attempts=3), ask())
    assert err.http_status == 500 and err.retryable
    assert err.message == "test: Internal server error. (internal_error) (HTTP 500)"
    assert len(llmock.requests) == 3 and len(sleep.waits) == 2
    retries = [r.getMessage() for r in caplog.records if r.name == "opencode.providers"]
    assert retries == [
        f"test: Internal server error. (internal_error) (HTTP 500); retry {n}/2 in {wait:.2f}s"
        for n, wait in enumerate(sleep.waits, 1)
    ]


async def test_llmock_insufficient_quota_is_never_retried(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.fail(429, code="insufficient_quota", message="You exceeded your current quota.", times=None)
    err = await failure(provider(llmock.base_url("openai"), http, sleep), ask())
    assert err.message == "test: You exceeded your current quota. (insufficient_quota) (HTTP 429)"
    assert err.code == "provider_quota" and not err.retryable and err.http_status == 429
    assert len(llmock.requests) == 1 and sleep.waits == []


async def test_llmock_truncated_stream_is_an_error(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.reply("one two three four").truncate(after_chunks=3)
    p = provider(llmock.base_url("openai"), http, sleep)
    events: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async for event in p.stream(ask()):
            events.append(event)
    assert info.value.message == "test: the stream ended before a finish_reason"
    assert info.value.code == "provider_stream_broken" and not info.value.retryable
    assert joined(events) == [TextDelta("one two ")]  # what arrived, then the error
    assert len(llmock.requests) == 1


async def test_llmock_corrupt_sse_is_an_error(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.reply("one two three").corrupt(after_chunks=2)
    err = await failure(provider(llmock.base_url("openai"), http, sleep), ask())
    assert err.message.startswith("test: malformed data in the stream: '{")
    assert err.code == "provider_stream_broken"


async def test_llmock_disconnect_mid_stream(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.reply("one two three").disconnect(after_chunks=2)
    err = await failure(provider(llmock.base_url("openai"), http, sleep), ask())
    assert err.code in ("provider_stream_broken",)
    assert "mid-stream" in err.message or "ended before" in err.message


async def test_llmock_stalled_stream(llmock: Any, sleep: RecordingSleep) -> None:
    llmock.reply("one two three").stall(after_chunks=2, seconds=3)
    session = create_session(sock_read=0.3)
    try:
        err = await failure(provider(llmock.base_url("openai"), session, sleep), ask())
    finally:
        await session.close()
    assert err.message == "test: stream stalled: no data for 0.3s"
    assert err.code == "provider_stalled" and sleep.waits == []


async def test_refused_connection(http: Any, sleep: RecordingSleep, caplog: Any) -> None:
    err = await failure(provider(f"http://127.0.0.1:{closed_port()}/v1", http, sleep, attempts=2), ask())
    assert err.code == "provider_unreachable" and err.retryable and err.http_status is None
    assert err.message.startswith("test: cannot connect to http://127.0.0.1:")
    assert len(sleep.waits) == 1
    assert sum(r.name == "opencode.providers" for r in caplog.records) == 1


async def test_llmock_list_models(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    models = await provider(llmock.base_url("openai"), http, sleep).list_models()
    assert "gpt-4o-mini" in [m.id for m in models]


# --------------------------------------------------------------------------- against the fake


async def test_fake_request_shape_and_event_sequence(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Reply(text="Hello world", input_tokens=21, output_tokens=3))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert joined(events) == [TextDelta("Hello world"), UsageReport(21, 3), Finish("stop")]
    sent = fake_llm.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("reply,report", [
    (Reply(text="ok", input_tokens=3000, cache_read_tokens=2048, output_tokens=9), UsageReport(3000, 9, 2048, 0)),
    # OpenRouter also says what a model that charges for writes (Claude) had written to the cache.
    (Reply(text="ok", input_tokens=3000, cache_read_tokens=1024, cache_write_tokens=900, output_tokens=9),
     UsageReport(3000, 9, 1024, 900)),
    (Reply(text="ok", input_tokens=3000, cache_read_tokens=2944, output_tokens=9, deepseek_usage=True),
     UsageReport(3000, 9, 2944, 0)),
    (Reply(text="ok", input_tokens=3000, output_tokens=9), UsageReport(3000, 9)),
], ids=["openai", "openrouter", "deepseek", "none"])
async def test_fake_cached_prompt_tokens_in_usage(fake_llm: Any, http: Any, sleep: RecordingSleep,
                                                  reply: Reply, report: UsageReport) -> None:
    """`prompt_tokens` is all the prompt's; the part read from the cache is in
    `prompt_tokens_details.cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`)."""
    fake_llm.push(reply)
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert events[-2] == report


async def test_fake_parallel_tool_calls_in_order(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Reply(tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="call_a"),
                                    FakeToolCall("get_weather", {"city": "Rome"}, id="call_b")]))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask(tools=[WEATHER]))
    assert events == [
        ToolCallReady("call_a", "get_weather", {"city": "Paris"}),
        ToolCallReady("call_b", "get_weather", {"city": "Rome"}),
        UsageReport(11, 7),
        Finish("tool_calls"),
    ]


async def test_fake_history_with_tools_and_images(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    async def loader(part: ImagePart) -> tuple[bytes, str]:
        return f"bytes of {part.filename}".encode(), "image/png"

    def data_url(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode(f"bytes of {name}".encode()).decode()

    fake_llm.push(Reply(text="ok"))
    shot = ImagePart(filename="shot.png")
    render = ImagePart(filename="render.png")
    request = ChatRequest(model="gpt-test", system="", max_tokens=300, temperature=0.2, messages=[
        ChatMessage("user", [TextPart(text="look"), shot]),
        ChatMessage("assistant", [TextPart(text="Checking."),
                                  ToolCallPart(id="call_1", name="get_weather", arguments={"city": "Paris"}),
                                  ToolCallPart(id="call_2", name="render", arguments={})]),
        ChatMessage("user", [ToolResultPart(tool_call_id="call_1", name="get_weather", content="sunny"),
                             ToolResultPart(tool_call_id="call_2", name="render", content="done", images=[render])]),
    ], tools=[WEATHER])
    await collect(provider(f"{fake_llm.url}/v1", http, sleep, loader=loader), request)
    body = fake_llm.last.body
    assert body["max_tokens"] == 300 and body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": data_url("shot.png")}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "render", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "done"},
        {"role": "user", "content": [{"type": "text", "text": "Images returned by render:"},
                                     {"type": "image_url", "image_url": {"url": data_url("render.png")}}]},
    ]


async def test_openai_host_uses_max_completion_tokens(http: Any, sleep: RecordingSleep) -> None:
    request = ChatRequest(model="gpt-4.1", system="", messages=[], max_tokens=50)
    official = provider("https://api.openai.com/v1", http, sleep)
    assert (await official.request_body(request))["max_completion_tokens"] == 50
    forced = provider("http://127.0.0.1:1/v1", http, sleep, extra={"max_tokens_field": "max_completion_tokens"})
    assert "max_completion_tokens" in await forced.request_body(request)


async def test_fake_gemini_quirks_and_thought_signature_roundtrip(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    signature = {"google": {"thought_signature": "c2lnbmF0dXJl"}}
    fake_llm.push(Stream(gemini_chunks(Reply(tool_calls=[
        FakeToolCall("get_weather", {"city": "Paris"}, id="function-call-1", extra_content=signature),
        FakeToolCall("get_weather", {"city": "Lima"}, id="function-call-2"),
    ], input_tokens=30, output_tokens=9))), Reply(text="Sunny."))
    p = provider(f"{fake_llm.url}/v1", http, sleep)
    events = await collect(p, ask(tools=[WEATHER], model="gemini-2.5-flash"))
    assert events == [
        ToolCallReady("function-call-1", "get_weather", {"city": "Paris"}, {"extra_content": signature}),
        ToolCallReady("function-call-2", "get_weather", {"city": "Lima"}),
        UsageReport(30, 9),
        Finish("tool_calls"),  # Gemini said "stop"
    ]
    first = events[0]
    follow_up = ChatRequest(model="gemini-2.5-flash", system="", messages=[
        ChatMessage("user", [TextPart(text="weather?")]),
        ChatMessage("assistant", [ToolCallPart(id=first.id, name=first.name, arguments=first.arguments,
                                               provider_data=first.provider_data)]),
        ChatMessage("user", [ToolResultPart(tool_call_id=first.id, name=first.name, content="sunny")]),
    ], tools=[WEATHER])
    assert await collect(p, follow_up) == [TextDelta("Sunny."), UsageReport(11, 7), Finish("stop")]
    sent_call = fake_llm.last.body["messages"][1]["tool_calls"][0]
    assert sent_call["extra_content"] == signature


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_fake_reasoning_goes_back_with_its_turns_calls_only(fake_llm: Any, http: Any, sleep: RecordingSleep,
                                                                   field: str) -> None:
    """DeepSeek's thinking mode refuses (400) a tool-call turn sent back without its reasoning;
    the reasoning is never reply text, and a turn without calls keeps none."""
    fake_llm.push(Reply(reasoning="I should check. Paris first.", reasoning_field=field, tool_calls=[
                      FakeToolCall("get_weather", {"city": "Paris"}, id="call_1"),
                      FakeToolCall("get_weather", {"city": "Rome"}, id="call_2")]),
                  Reply(reasoning="Both are sunny.", reasoning_field=field, text="Sunny in both."))
    p = provider(f"{fake_llm.url}/v1", http, sleep)
    events = await collect(p, ask(tools=[WEATHER]))
    kept = {"reasoning": {"profile": "test", field: "I should check. Paris first."}}
    assert events == [ToolCallReady("call_1", "get_weather", {"city": "Paris"}, kept),
                      ToolCallReady("call_2", "get_weather", {"city": "Rome"}), UsageReport(11, 7), Finish("tool_calls")]
    calls = [ToolCallPart(id=e.id, name=e.name, arguments=e.arguments, provider_data=e.provider_data)
             for e in events[:2]]
    history = ask(tools=[WEATHER]).messages + [
        ChatMessage("assistant", [TextPart(text="Checking."), *calls]),
        ChatMessage("user", [ToolResultPart(tool_call_id=c.id, name=c.name, content="sunny") for c in calls])]
    events = await collect(p, ChatRequest(model="gpt-test", system="", messages=history, tools=[WEATHER]))
    assert joined(events) == [TextDelta("Sunny in both."), UsageReport(11, 7), Finish("stop")]
    assistant = fake_llm.last.body["messages"][1]
    assert list(assistant) == ["role", "content", field, "tool_calls"]
    assert assistant[field] == "I should check. Paris first."
    # The reply without calls keeps no reasoning, and another profile never gets this one's.
    other = provider(f"{fake_llm.url}/v1", http, sleep, name="other")
    for turns, who in ((history[:1] + [ChatMessage("assistant", [TextPart(text="Sunny in both.")])], p),
                       (history, other)):
        body = await who.request_body(ChatRequest(model="gpt-test", system="", messages=turns, tools=[WEATHER]))
        assert field not in json.dumps(body["messages"]), who.name


async def test_fake_thinking_server_gets_each_tool_turns_reasoning(fake_llm: Any, http: Any,
                                                                  sleep: RecordingSleep) -> None:
    """Against the fake that refuses, as DeepSeek does, a tool-call turn without reasoning_content.
    A delta holding text and reasoning both is not plain text (the inline reader's one-text
    shortcut must leave it to the full decoder, or the reasoning is lost)."""
    fake_llm.thinking = True

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    fake_llm.push(Stream([chunk({"role": "assistant", "content": None, "reasoning_content": "Look"}),
                          chunk({"content": "Checking.", "reasoning_content": " it up."}),
                          chunk({"tool_calls": [call]}), chunk({}, "tool_calls"), sse("[DONE]")]),
                  Reply(text="Cold."))
    p = provider(f"{fake_llm.url}/v1", http, sleep)
    events = await collect(p, ask(tools=[WEATHER]))
    assert joined(events) == [TextDelta("Checking."), ToolCallReady("c1", "get_weather", {"city": "Oslo"}, {
        "reasoning": {"profile": "test", "reasoning_content": "Look it up."}}), Finish("tool_calls")]
    history = ask(tools=[WEATHER]).messages + [
        ChatMessage("assistant", [TextPart(text="Checking."), ToolCallPart(
            id="c1", name="get_weather", arguments={"city": "Oslo"}, provider_data=events[1].provider_data)]),
        ChatMessage("user", [ToolResultPart(tool_call_id="c1", name="get_weather", content="-5 C")])]
    events = await collect(p, ChatRequest(model="gpt-test", system="", messages=history, tools=[WEATHER]))
    assert joined(events) == [TextDelta("Cold."), UsageReport(11, 7), Finish("stop")]
    assert fake_llm.last.body["messages"][1]["reasoning_content"] == "Look it up."
    without = ChatMessage("assistant", [ToolCallPart(id="c1", name="get_weather", arguments={"city": "Oslo"})])
    err = await failure(p, ChatRequest(model="gpt-test", system="", messages=[history[0], without, history[2]],
                                       tools=[WEATHER]))
    assert err.http_status == 400 and "reasoning_content in the thinking mode must be passed back" in err.message


async def test_fake_tool_fragments_without_index_continue_the_last_call(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    fake_llm.push(Stream([
        chunk({"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": " 1}"}}]}),
        chunk({"tool_calls": [{"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert events == [ToolCallReady("c1", "f", {"a": 1}), ToolCallReady("c2", "g", {}), Finish("tool_calls")]


async def test_fake_odd_tool_call_fragments(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    def chunk(calls: list[dict[str, Any]], finish: str | None = None) -> bytes:
        return sse({"choices": [{"index": 0, "delta": {"tool_calls": calls} if calls else {}, "finish_reason": finish}]})

    fake_llm.push(Stream([
        # Two whole calls in one chunk, with neither index nor id.
        chunk([{"function": {"name": "f", "arguments": '{"n": 1}'}}, {"function": {"name": "g", "arguments": "{}"}}]),
        # A server reusing index 0 for a second call with a new id.
        chunk([{"index": 0, "id": "x1", "function": {"name": "h", "arguments": '{"k":'}}]),
        chunk([{"index": 0, "function": {"arguments": '"v"}'}}]),
        chunk([{"index": 0, "id": "x2", "function": {"name": "h", "arguments": "{}"}}]),
        chunk([], "tool_calls"),
        sse("[DONE]"),
    ]))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCallReady)] == [
        ("f", {"n": 1}), ("g", {}), ("h", {"k": "v"}), ("h", {})]
    assert [e.id for e in events if isinstance(e, ToolCallReady)][2:] == ["x1", "x2"]


async def test_fake_invalid_tool_arguments_are_reported_not_fatal(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    chunks = openai_chunks(Reply(tool_calls=[FakeToolCall("f", {"x": 1}, id="c1")]))
    # Drop the closing brace: the arguments arrive as '{"x": 1' + '}' in 7-character fragments.
    kept = [c for c in chunks if b'"arguments":"}"' not in c]
    assert len(kept) == len(chunks) - 1
    fake_llm.push(Stream(kept))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert events[0] == ToolCallReady("c1", "f", {}, {"invalid_arguments": '{"x": 1'})
    assert events[-1] == Finish("tool_calls")


async def test_fake_a_stream_without_done_is_whole_after_its_finish_reason(fake_llm: Any, http: Any,
                                                                          sleep: RecordingSleep, caplog: Any) -> None:
    """ik_llama.cpp and older TGI end the body after the finish_reason (and usage), without [DONE]."""
    caplog.set_level("DEBUG", logger="opencode.providers.openai")
    call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_1")
    fake_llm.push(Stream(openai_chunks(Reply(text="The answer."))[:-1]),
                  Stream(openai_chunks(Reply(tool_calls=[call]))[:-2]))  # no usage either
    p = provider(f"{fake_llm.url}/v1", http, sleep)
    assert joined(await collect(p, ask())) == [TextDelta("The answer."), UsageReport(11, 7), Finish("stop")]
    assert await collect(p, ask(tools=[WEATHER])) == [
        ToolCallReady("call_1", "get_weather", {"city": "Paris"}), Finish("tool_calls")]
    assert "test: the stream ended without [DONE] after finish_reason 'tool_calls'; taken as whole" in caplog.messages


async def test_fake_a_stream_without_finish_reason_or_done_is_an_error(fake_llm: Any, http: Any,
                                                                       sleep: RecordingSleep) -> None:
    call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_1")
    fake_llm.push(Stream(openai_chunks(Reply(text="almost", tool_calls=[call]))[:-3]))
    err = await failure(provider(f"{fake_llm.url}/v1", http, sleep), ask(tools=[WEATHER]))
    assert err.message == "test: the stream ended before a finish_reason" and err.code == "provider_stream_broken"
    assert len(fake_llm.requests) == 1  # a broken stream is not retried


@pytest.mark.parametrize("reason,finish", [("length", "length"), ("content_filter", "refused")])
async def test_fake_finish_reasons_that_cut_a_reply(fake_llm: Any, http: Any, sleep: RecordingSleep,
                                                   reason: str, finish: str) -> None:
    fake_llm.push(Reply(text="cut", finish=reason))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert events[-1] == Finish(finish)  # type: ignore[arg-type]


async def test_fake_a_refusal_is_the_reply_and_says_so(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    """A model that refuses streams `refusal` instead of `content`: its words are the reply, and the
    reply is `refused` (as `content_filter` is), not an empty answer."""
    fake_llm.push(Reply(refusal="I'm sorry, I can't help with that."))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert joined(events) == [TextDelta("I'm sorry, I can't help with that."), UsageReport(11, 7), Finish("refused")]


@pytest.mark.parametrize("content_type,body,message", [
    ("application/json", '{"error": {"message": "model gpt-x does not exist", "code": "model_not_found"}}',
     "test: model gpt-x does not exist (model_not_found) (HTTP 200, application/json)"),
    ("application/json", '{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}',
     "test: expected a stream (text/event-stream), got application/json: "
     "'{\"id\": \"chatcmpl-1\", \"object\": \"chat.completion\", \"choices\": []}'"),
    ("text/html", "<html><body>Sign in to the Wi-Fi</body></html>",
     "test: expected a stream (text/event-stream), got text/html: '<html><body>Sign in to the Wi-Fi</body></html>'"),
])
async def test_fake_a_200_that_is_not_a_stream_says_what_came(fake_llm: Any, http: Any, sleep: RecordingSleep,
                                                              content_type: str, body: str, message: str) -> None:
    fake_llm.push(Stream([body.encode()], content_type=content_type))
    err = await failure(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert err.message == message and not err.retryable and err.http_status == 200
    assert len(fake_llm.requests) == 1


async def test_fake_in_stream_error_chunk(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    chunks = openai_chunks(Reply(text="partial answer"))
    error = sse({"error": {"message": "Upstream provider returned an error", "code": 502}})
    fake_llm.push(Stream(chunks[:2] + [error]))
    err = await failure(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert err.message == "test: Upstream provider returned an error"
    assert not err.retryable  # output was already streamed


async def test_fake_in_stream_error_before_output_is_retried(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    error = sse({"error": {"message": "Provider overloaded", "code": 503}})
    fake_llm.push(Stream([error]), Reply(text="recovered"))
    events = await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert events[0] == TextDelta("recovered") and len(fake_llm.requests) == 2 and len(sleep.waits) == 1


async def test_fake_http_error_message_status_and_gemini_list_body(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Fail(400, [{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}]))
    err = await failure(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert err.message == "test: API key not valid. (INVALID_ARGUMENT) (HTTP 400)"
    assert err.http_status == 400 and not err.retryable and err.code == "provider_bad_request"


async def test_fake_retry_after_seconds_header(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Fail(503, {"error": {"message": "busy"}}, {"retry-after": "2"}), Reply(text="ok"))
    await collect(provider(f"{fake_llm.url}/v1", http, sleep), ask())
    assert sleep.waits == [2.0]


async def test_fake_list_models_with_declared_caps(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    from opencode_agent.core.protocol import ModelCaps

    profile = ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1",
                              models={"gpt-a": ModelCaps(vision=True)})
    models = await OpenAIProvider(profile, None, http).list_models()
    assert [(m.id, m.caps) for m in models] == [("gpt-a", ModelCaps(vision=True)), ("gpt-b", None)]
    assert "Authorization" not in fake_llm.last.headers  # no key, no header


# --------------------------------------------------------------------------- the fake is well-formed


async def test_official_sdk_parses_the_fake_streams(fake_llm: Any) -> None:
    from openai import AsyncOpenAI
    from openai.lib.streaming.chat import ChatCompletionStreamState

    fake_llm.push(Reply(text="Hi there", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="call_1")],
                        cache_read_tokens=6, cache_write_tokens=2))
    client = AsyncOpenAI(base_url=f"{fake_llm.url}/v1", api_key="sk-fake", max_retries=0)
    try:
        state = ChatCompletionStreamState()
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            state.handle_chunk(chunk)
        final = state.get_final_completion()
        choice = final.choices[0]
        assert choice.message.content == "Hi there" and choice.finish_reason == "tool_calls"
        assert final.usage is not None and final.usage.total_tokens == 18
        details = final.usage.prompt_tokens_details
        assert details is not None and (details.cached_tokens, details.cache_write_tokens) == (6, 2)
        call = choice.message.tool_calls[0]
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
    finally:
        await client.close()


async def test_official_sdk_parses_the_fake_refusal(fake_llm: Any) -> None:
    from openai import AsyncOpenAI
    from openai.lib.streaming.chat import ChatCompletionStreamState

    fake_llm.push(Reply(refusal="I can't help with that."))
    client = AsyncOpenAI(base_url=f"{fake_llm.url}/v1", api_key="sk-fake", max_retries=0)
    try:
        state = ChatCompletionStreamState()
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
        async for chunk in stream:
            state.handle_chunk(chunk)
    finally:
        await client.close()
    message = state.get_final_completion().choices[0].message
    assert message.refusal == "I can't help with that." and message.content is None


async def test_official_sdk_reads_the_fake_reasoning_chunks(fake_llm: Any) -> None:
    from openai import AsyncOpenAI

    fake_llm.push(Reply(reasoning="Think first.", text="Done."))
    client = AsyncOpenAI(base_url=f"{fake_llm.url}/v1", api_key="sk-fake", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], stream=True)
        deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]
    finally:
        await client.close()
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Think first."
    assert "".join(d.content or "" for d in deltas) == "Done."


async def test_official_sdk_reads_the_fake_gemini_chunks(fake_llm: Any) -> None:
    """Chunk by chunk only: the SDK's accumulator indexes tool calls by `index`, which real Gemini
    omits too; that quirk is the point of this format."""
    from openai import AsyncOpenAI

    signature = {"google": {"thought_signature": "x"}}
    fake_llm.push(Stream(gemini_chunks(Reply(text="Let me check.", tool_calls=[
        FakeToolCall("get_weather", {"city": "Oslo"}, id="fc-1", extra_content=signature)]))))
    client = AsyncOpenAI(base_url=f"{fake_llm.url}/v1", api_key="sk-fake", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], stream=True)
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me check."
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.usage is not None and last.usage.total_tokens == 18
    call = last.choices[0].delta.tool_calls[0]
    assert call.index is None and call.id == "fc-1" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert call.model_extra["extra_content"] == signature

