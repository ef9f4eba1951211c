"""The Anthropic Messages dialect against llmock and against our own loopback fake."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from llmock.scenarios import Reply as MockReply
from llmock.scenarios import ToolCall as MockToolCall

from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import ImagePart, ProviderProfile, TextPart, ToolCallPart, ToolResultPart
from opencode_agent.core.providers.anthropic import AnthropicProvider
from opencode_agent.core.providers.base import (
    ChatMessage, ChatRequest, Finish, TextDelta, ToolCallReady, UsageReport,
)
from opencode_agent.core.providers.http import RetryPolicy, create_session
from opencode_agent.core.tools import ToolSpec
from opencode_agent.tests.fakes.llm_servers import (  # noqa: F401  (fixture)
    collect, http, read_mode,
    FakeToolCall, Fail, RecordingSleep, Reply, Stream, anthropic_error_event, anthropic_events, closed_port, joined, fake_llm,
)

KEY = "sk-ant-api03-test0123456789SECRET"
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def provider(base_url: str, http: Any, sleep: RecordingSleep, *, attempts: int = 3, loader: Any = None) -> AnthropicProvider:
    profile = ProviderProfile(name="claude", kind="anthropic", base_url=base_url)
    return AnthropicProvider(profile, KEY, http, loader, retry=RetryPolicy(max_attempts=attempts, sleep=sleep))


def ask(text: str = "hi", *, tools: list[ToolSpec] | None = None) -> ChatRequest:
    return ChatRequest(model="claude-test", system="You are terse.", messages=[ChatMessage("user", [TextPart(text=text)])],
                       tools=tools or [])


pytestmark = pytest.mark.usefixtures("read_mode")  # every test here runs with both readers


async def failure(p: AnthropicProvider, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(p, request)
    return info.value


# --------------------------------------------------------------------------- against llmock


async def test_llmock_plain_text_usage_and_request(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.reply("Bonjour tout le monde")
    events = await collect(provider(llmock.base_url("anthropic"), http, sleep), ask())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Bonjour tout le monde"
    usage = events[-2]
    assert isinstance(usage, UsageReport) and usage.input_tokens > 0 and usage.output_tokens > 1
    assert events[-1] == Finish("stop")
    body = llmock.last_request.body
    cached = {"type": "ephemeral"}
    assert body == {"model": "claude-test", "max_tokens": 4096, "stream": True,
                    "system": [{"type": "text", "text": "You are terse.", "cache_control": cached}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cached}]}]}


async def test_llmock_single_and_parallel_tool_calls(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.call_tool("get_weather", {"city": "Paris"}, text="Let me look.")
    llmock.add(MockReply(tool_calls=(MockToolCall("get_weather", {"city": "Oslo"}),
                                     MockToolCall("get_weather", {"city": "Kyiv", "units": "metric"}))))
    p = provider(llmock.base_url("anthropic"), http, sleep)
    first = joined(await collect(p, ask(tools=[WEATHER])))
    assert [type(e).__name__ for e in first] == ["TextDelta", "ToolCallReady", "UsageReport", "Finish"]
    assert first[0] == TextDelta("Let me look.")
    assert (first[1].name, first[1].arguments) == ("get_weather", {"city": "Paris"}) and first[1].id.startswith("toolu_")
    assert first[-1] == Finish("tool_calls")
    second = await collect(p, ask(tools=[WEATHER]))
    assert [e.arguments for e in second if isinstance(e, ToolCallReady)] == [{"city": "Oslo"}, {"city": "Kyiv", "units": "metric"}]
    assert llmock.requests[0].body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER.parameters}]


async def test_llmock_529_overloaded_is_retried(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.fail(529, retry_after=0.05).reply("ok now")
    events = await collect(provider(llmock.base_url("anthropic"), http, sleep), ask())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "ok now"
    assert sleep.waits == [0.05]
    assert [r.status for r in llmock.requests] == [529, 200]


async def test_llmock_429_error_message_and_retry_after(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.fail(429, retry_after=0.5, message="Number of requests has exceeded your rate limit.", times=None)
    err = await failure(provider(llmock.base_url("anthropic"), http, sleep, attempts=2), ask())
    assert err.message == "claude: Number of requests has exceeded your rate limit. (rate_limit_error) (HTTP 429)"
    assert (err.http_status, err.retryable, err.retry_after, err.code) == (429, True, 0.5, "provider_rate_limited")
    assert sleep.waits == [0.5]


async def test_llmock_500_and_billing_error(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    llmock.fail(500, times=None)
    err = await failure(provider(llmock.base_url("anthropic"), http, sleep, attempts=2), ask())
    assert err.http_status == 500 and len(llmock.requests) == 2
    llmock.reset()
    llmock.fail(400, code="billing_error", message="Your credit balance is too low to access the Anthropic API.")
    err = await failure(provider(llmock.base_url("anthropic"), http, sleep), ask())
    assert err.code == "provider_quota" and not err.retryable
    assert err.message == "claude: Your credit balance is too low to access the Anthropic API. (billing_error) (HTTP 400)"


async def test_llmock_truncated_and_corrupt_streams(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    p = provider(llmock.base_url("anthropic"), http, sleep)
    llmock.reply("a b c d e").truncate(after_chunks=4)
    assert (await failure(p, ask())).message == "claude: the stream ended before message_stop"
    llmock.reply("a b c").corrupt(after_chunks=2)
    err = await failure(p, ask())
    assert err.message.startswith("claude: malformed data in the stream:") and err.code == "provider_stream_broken"


async def test_llmock_stalled_stream(llmock: Any, sleep: RecordingSleep) -> None:
    llmock.reply("a b c").stall(after_chunks=3, seconds=3)
    session = create_session(sock_read=0.3)
    try:
        err = await failure(provider(llmock.base_url("anthropic"), session, sleep), ask())
    finally:
        await session.close()
    assert err.message == "claude: stream stalled: no data for 0.3s" and err.code == "provider_stalled"


async def test_llmock_list_models(llmock: Any, http: Any, sleep: RecordingSleep) -> None:
    models = await provider(llmock.base_url("anthropic"), http, sleep).list_models()
    assert "claude-sonnet-4-6" in [m.id for m in models]


async def test_refused_connection(http: Any, sleep: RecordingSleep) -> None:
    err = await failure(provider(f"http://127.0.0.1:{closed_port()}", http, sleep, attempts=1), ask())
    assert err.code == "provider_unreachable" and err.message.startswith("claude: cannot connect to http://127.0.0.1:")


# --------------------------------------------------------------------------- against the fake


async def test_fake_exact_events_headers_and_usage(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    fake_llm.push(Reply(text="Hi there", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1")],
                        input_tokens=40, output_tokens=12))
    events = await collect(provider(f"{fake_llm.url}/anthropic", http, sleep), ask(tools=[WEATHER]))
    assert joined(events) == [
        TextDelta("Hi there"),
        ToolCallReady("toolu_1", "get_weather", {"city": "Paris"}),
        UsageReport(40, 12),
        Finish("tool_calls"),
    ]
    sent = fake_llm.last
    assert sent.path == "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers


async def test_fake_thinking_goes_back_first_in_its_tool_turn_exactly(fake_llm: Any, http: Any,
                                                                      sleep: RecordingSleep) -> None:
    """Extended thinking (and servers thinking by default behind this format) refuse (400) a
    tool-use turn that does not start with its thinking blocks, text and signature unchanged;
    thinking is never reply text, and a turn without calls keeps none."""
    fake_llm.thinking = True
    fake_llm.push(Reply(reasoning="The user wants weather. ", signature="EqQBCgIYAhIM+/sig==", redacted="ZW5jcnlwdGVk",
                        text="Checking.", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1"),
                                                     FakeToolCall("get_weather", {"city": "Rome"}, id="toolu_2")]),
                  Reply(reasoning="Sunny.", text="Sunny in both."))
    p = provider(f"{fake_llm.url}/anthropic", http, sleep)
    events = await collect(p, ask(tools=[WEATHER]))
    blocks = [{"type": "thinking", "thinking": "The user wants weather. ", "signature": "EqQBCgIYAhIM+/sig=="},
              {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"}]
    assert joined(events) == [
        TextDelta("Checking."),
        ToolCallReady("toolu_1", "get_weather", {"city": "Paris"}, {"reasoning": {"profile": "claude", "blocks": blocks}}),
        ToolCallReady("toolu_2", "get_weather", {"city": "Rome"}), UsageReport(11, 7), Finish("tool_calls")]
    calls = [ToolCallPart(id=e.id, name=e.name, arguments=e.arguments, provider_data=e.provider_data)
             for e in events[1:3]]
    history = ask().messages + [
        ChatMessage("assistant", [TextPart(text="Checking."), *calls]),
        ChatMessage("user", [ToolResultPart(tool_call_id=c.id, name=c.name, content="sunny") for c in calls])]
    events = await collect(p, ChatRequest(model="claude-test", system="", messages=history, tools=[WEATHER]))
    assert joined(events) == [TextDelta("Sunny in both."), UsageReport(11, 7), Finish("stop")]
    assert fake_llm.last.body["messages"][1]["content"] == blocks + [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]
    # Without its thinking the turn is refused, as the real API refuses it.
    bare = [ChatMessage("assistant", [c.model_copy(update={"provider_data": None}) for c in calls])]
    err = await failure(p, ChatRequest(model="claude-test", system="", messages=[history[0], *bare, history[2]],
                                       tools=[WEATHER]))
    assert err.http_status == 400 and "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in err.message
    # Another profile (another server, another model's signatures) never gets this one's thinking.
    other = AnthropicProvider(ProviderProfile(name="other", kind="anthropic", base_url=f"{fake_llm.url}/anthropic"),
                              KEY, http)
    body = await other.request_body(ChatRequest(model="claude-test", system="", messages=history, tools=[WEATHER]))
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "Checking."}


async def test_fake_interleaved_thinking_goes_back_where_it_streamed(fake_llm: Any, http: Any,
                                                                     sleep: RecordingSleep) -> None:
    """Interleaved thinking (beta `interleaved-thinking-2025-05-14`): a thinking block between two
    `tool_use` blocks of one turn. The turn goes back with each thinking block where it came,
    before the call it led to, not all of them moved to the start: the API takes the thinking
    sequence back only as the model produced it."""
    fake_llm.thinking = True
    fake_llm.push(Reply(reasoning="Weather, two cities. ", signature="c2lnMQ==", text="Checking.",
                        tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1"),
                                    FakeToolCall("get_weather", {"city": "Rome"}, id="toolu_2",
                                                 thinking="Paris asked; now Rome.", thinking_signature="c2lnMg==")]),
                  Reply(text="Both sunny."))
    p = provider(f"{fake_llm.url}/anthropic", http, sleep)
    events = await collect(p, ask(tools=[WEATHER]))
    calls = [ToolCallPart(id=e.id, name=e.name, arguments=e.arguments, provider_data=e.provider_data)
             for e in events if isinstance(e, ToolCallReady)]
    assert await sent_back(p, fake_llm, [TextPart(text="Checking."), *calls]) == [
        {"type": "thinking", "thinking": "Weather, two cities. ", "signature": "c2lnMQ=="},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "thinking", "thinking": "Paris asked; now Rome.", "signature": "c2lnMg=="},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]


async def sent_back(p: Any, fake_llm: Any, turn: list[Any]) -> list[dict[str, Any]]:
    """The assistant content the next request sends for `turn`, its calls answered."""
    calls = [part for part in turn if isinstance(part, ToolCallPart)]
    history = ask().messages + [
        ChatMessage("assistant", turn),
        ChatMessage("user", [ToolResultPart(tool_call_id=c.id, name=c.name, content="sunny") for c in calls])]
    await collect(p, ChatRequest(model="claude-test", system="", messages=history, tools=[WEATHER]))
    return fake_llm.last.body["messages"][1]["content"]


async def test_fake_words_between_calls_go_back_where_they_streamed(fake_llm: Any, http: Any,
                                                                     sleep: RecordingSleep) -> None:
    """A turn may stream thinking, text, a call, then more thinking, more text and another call.
    The text after the first call streams after it (inline too), and the turn goes back as it
    streamed: each call's thinking opens the stretch since the call before it, ahead of the words
    said there (a model thinks, says, then calls), never moved behind them."""
    fake_llm.thinking = True
    fake_llm.push(Reply(reasoning="Two cities. ", signature="c2lnMQ==", text="Paris first.",
                        tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1"),
                                    FakeToolCall("get_weather", {"city": "Rome"}, id="toolu_2", thinking="Now Rome.",
                                                 thinking_signature="c2lnMg==", text="Then Rome.")]),
                  Reply(text="Both sunny."))
    p = provider(f"{fake_llm.url}/anthropic", http, sleep)
    events = joined(await collect(p, ask(tools=[WEATHER])))
    assert [e.text if isinstance(e, TextDelta) else getattr(e, "id", None) for e in events[:4]] == [
        "Paris first.", "toolu_1", "Then Rome.", "toolu_2"]
    turn = [TextPart(text=e.text) if isinstance(e, TextDelta) else
            ToolCallPart(id=e.id, name=e.name, arguments=e.arguments, provider_data=e.provider_data) for e in events[:4]]
    assert await sent_back(p, fake_llm, turn) == [
        {"type": "thinking", "thinking": "Two cities. ", "signature": "c2lnMQ=="},
        {"type": "text", "text": "Paris first."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "thinking", "thinking": "Now Rome.", "signature": "c2lnMg=="},
        {"type": "text", "text": "Then Rome."},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]


def breakpoints(value: Any, path: str = "") -> list[str]:
    """Where `value` (a request body) carries `cache_control`, as sorted paths like `messages.2.content.0`."""
    if isinstance(value, dict):
        found = [path.lstrip(".")] if "cache_control" in value else []
        return sorted(found + [p for k, v in value.items() for p in breakpoints(v, f"{path}.{k}")])
    if isinstance(value, list):
        return sorted(p for i, v in enumerate(value) for p in breakpoints(v, f"{path}.{i}"))
    return []


async def test_fake_cache_breakpoints_on_the_prefix_the_last_turn_and_where_the_last_request_ended(
        fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    """Tools and system, then the conversation up to the newest turn, are cached: one breakpoint
    on the system prompt, one on the last turn's last block, so each tool round reads the round
    before it, and one where the request before ended (Anthropic looks back only about 20 blocks
    from a breakpoint for a cached prefix: a round of many calls would miss it). Marked turns'
    kept encodings stay unmarked: marks left behind would pass the API's limit of 4."""
    fake_llm.push(Reply(text="Looking.", tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_1")]),
                  Reply(text="Snow."), Reply(text="Bye."))
    p = provider(f"{fake_llm.url}/anthropic", http, sleep)
    prompt = ChatMessage("user", [TextPart(text="weather in Oslo?")])
    turns = [prompt]
    await collect(p, ChatRequest(model="claude-test", system="You are terse.", messages=list(turns), tools=[WEATHER]))
    first = fake_llm.last.body
    assert breakpoints(first) == ["messages.0.content.0", "system.0"]
    turns += [ChatMessage("assistant", [TextPart(text="Looking."),
                                        ToolCallPart(id="toolu_1", name="get_weather", arguments={"city": "Oslo"})]),
              ChatMessage("user", [ToolResultPart(tool_call_id="toolu_1", name="get_weather", content="snow"),
                                   TextPart(text="and tomorrow?")])]
    await collect(p, ChatRequest(model="claude-test", system="You are terse.", messages=list(turns), tools=[WEATHER]))
    second = fake_llm.last.body
    # The last block of the last turn, and of the turn the first request ended with.
    assert breakpoints(second) == ["messages.0.content.0", "messages.2.content.1", "system.0"]
    assert second["messages"][0] == first["messages"][0]
    assert second["messages"][2]["content"][1] == {"type": "text", "text": "and tomorrow?",
                                                   "cache_control": {"type": "ephemeral"}}
    assert all("cache_control" not in encoded for turn in turns for encoded in turn.encoded.values())
    assert prompt.encoded  # kept, and reused by the second request
    # Without a system prompt the breakpoint for the prefix goes on the last tool.
    await collect(p, ChatRequest(model="claude-test", system="", messages=list(turns), tools=[WEATHER, WEATHER]))
    third = fake_llm.last.body
    assert breakpoints(third) == ["messages.0.content.0", "messages.2.content.1", "tools.1"]
    # A round of many calls: the mark where the last request ended is what finds its cache.
    calls = [ToolCallPart(id=f"toolu_{i}", name="get_weather", arguments={"city": f"c{i}"}) for i in range(12)]
    results = [ToolResultPart(tool_call_id=c.id, name=c.name, content="snow") for c in calls]
    long_round = [*turns, ChatMessage("assistant", [TextPart(text="Checking.")]),
                  ChatMessage("user", [TextPart(text="all twelve?")]),
                  ChatMessage("assistant", calls), ChatMessage("user", results)]
    fake_llm.push(Reply(text="Done."))
    await collect(p, ChatRequest(model="claude-test", system="You are terse.", messages=long_round, tools=[WEATHER]))
    fourth = fake_llm.last.body
    assert breakpoints(fourth) == ["messages.4.content.0", "messages.6.content.11", "system.0"]
    assert all("cache_control" not in encoded for turn in long_round for encoded in turn.encoded.values())


async def test_fake_prompt_cache_off_in_the_profile_marks_nothing(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    """`extra.prompt_cache: false`, for an Anthropic-compatible server that refuses the marks."""
    fake_llm.push(Reply(text="ok"))
    profile = ProviderProfile(name="claude", kind="anthropic", base_url=f"{fake_llm.url}/anthropic",
                              extra={"prompt_cache": False})
    p = AnthropicProvider(profile, KEY, http, retry=RetryPolicy(max_attempts=1, sleep=sleep))
    await collect(p, ask(tools=[WEATHER]))
    assert breakpoints(fake_llm.last.body) == [] and fake_llm.last.body["system"] == "You are terse."


def test_a_breakpoint_never_lands_on_a_thinking_block(http: Any) -> None:
    p = provider("http://127.0.0.1:1", http, RecordingSleep())
    thinking = [{"type": "thinking", "thinking": "hm", "signature": "c2ln"}, {"type": "redacted_thinking", "data": "eA=="}]
    wire = [{"role": "assistant", "content": thinking}]
    assert p.cache_breakpoint(wire) == wire and breakpoints(wire) == []
    wire = [{"role": "assistant", "content": [*thinking[:1], {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                                              *thinking[1:]]}]
    assert breakpoints(p.cache_breakpoint(wire)) == ["0.content.1"] and breakpoints(wire) == []


@pytest.mark.parametrize("at_end", [False, True], ids=["message_start", "restated-in-message_delta"])
async def test_fake_cached_prompt_tokens_in_usage(fake_llm: Any, http: Any, sleep: RecordingSleep, at_end: bool) -> None:
    """Anthropic's `input_tokens` is only what follows the last cache breakpoint: the prompt is
    that plus the cache reads and writes, each reported apart; `message_delta` may restate them
    (cumulative), and what it says last is what counts."""
    fake_llm.push(Reply(text="ok", input_tokens=5000, cache_read_tokens=4000, cache_write_tokens=800,
                        output_tokens=12, usage_at_end=at_end))
    events = await collect(provider(f"{fake_llm.url}/anthropic", http, sleep), ask())
    assert events[-2] == UsageReport(5000, 12, cache_read_tokens=4000, cache_write_tokens=800)


async def test_fake_history_conversion(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    async def loader(part: ImagePart) -> tuple[bytes, str]:
        return b"\x89PNG " + part.filename.encode(), "image/png"

    def b64(name: str) -> str:
        return base64.b64encode(b"\x89PNG " + name.encode()).decode()

    fake_llm.push(Reply(text="ok"))
    request = ChatRequest(model="claude-test", system="sys", max_tokens=1000, messages=[
        ChatMessage("user", [TextPart(text="what is this?"), ImagePart(filename="a.png")]),
        ChatMessage("assistant", [TextPart(text=""), ToolCallPart(id="call:1/x", name="look", arguments={"z": 1})]),
        ChatMessage("user", [TextPart(text="and then?"),
                             ToolResultPart(tool_call_id="call:1/x", name="look", content="a cat", is_error=False,
                                            images=[ImagePart(filename="b.png")]),
                             ]),
        ChatMessage("assistant", [ToolCallPart(id="c2", name="fail", arguments={})]),
        ChatMessage("user", [ToolResultPart(tool_call_id="c2", name="fail", content="boom", is_error=True)]),
    ], tools=[WEATHER])
    await collect(provider(f"{fake_llm.url}/anthropic", http, sleep, loader=loader), request)
    body = fake_llm.last.body
    assert body["max_tokens"] == 1000 and body["system"] == [{"type": "text", "text": "sys",
                                                             "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64("a.png")}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1_x", "name": "look", "input": {"z": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1_x", "content": [
                {"type": "text", "text": "a cat"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64("b.png")}},
            ]},
            # Where the request before ended: the turn before the last assistant turn.
            {"type": "text", "text": "and then?", "cache_control": {"type": "ephemeral"}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c2", "name": "fail", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "boom"}], "is_error": True,
             "cache_control": {"type": "ephemeral"}}]},
    ]


async def test_fake_overloaded_before_output_is_retried(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    start = anthropic_events(Reply(text="x"))[:1]  # message_start only: no output yet
    fake_llm.push(Stream(start + [anthropic_error_event()]), Reply(text="fine"))
    events = await collect(provider(f"{fake_llm.url}/anthropic", http, sleep), ask())
    assert events == [TextDelta("fine"), UsageReport(11, 7), Finish("stop")]
    assert len(fake_llm.requests) == 2 and len(sleep.waits) == 1


async def test_fake_overloaded_after_output_is_final(fake_llm: Any, http: Any, sleep: RecordingSleep) -> None:
    events = anthropic_events(Reply(text="one two three"))
    fake_llm.push(Stream(events[:5] + [anthropic_error_event()]))
    seen: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async for event in provider(f"{fake_llm.url}/anthropic", http, sleep).stream(ask()):
            seen.append(event)
    assert joined(seen) == [TextDelta("one two ")]  # what arrived, then the error
    err = info.value
    assert err.message == "claude: Overloaded (overloaded_error)"
    assert err.code == "provider_overloaded" and not err.retryable and len(fake_llm.requests) == 1


async def test_fake_a_200_that_is_not_a_stream_gives_the_providers_message(fake_llm: Any, http: Any,
                                                                          sleep: RecordingSleep) -> None:
    fake_llm.push(Fail(200, {"type": "error", "error": {"type": "invalid_request_error",
                                                        "message": "max_tokens: 64000 > 32000, the maximum"}}))
    err = await failure(provider(f"{fake_llm.url}/anthropic", http, sleep), ask())
    assert err.message == ("claude: max_tokens: 64000 > 32000, the maximum (invalid_request_error) "
                           "(HTTP 200, application/json)")
    assert not err.retryable and len(fake_llm.requests) == 1


@pytest.mark.parametrize("stop,finish", [("max_tokens", "length"), ("model_context_window_exceeded", "length"),
                                         ("refusal", "refused")])
async def test_fake_stop_reasons_that_cut_a_reply(fake_llm: Any, http: Any, sleep: RecordingSleep,
                                                 stop: str, finish: str) -> None:
    fake_llm.push(Reply(text="cut", finish=stop))
    events = await collect(provider(f"{fake_llm.url}/anthropic", http, sleep), ask())
    assert events[-1] == Finish(finish)  # type: ignore[arg-type]


@pytest.mark.parametrize("model,extra,cap,sent", [
    ("claude-sonnet-4-5-20250929", {}, None, 32_000),
    ("claude-opus-4-1", {}, None, 32_000),
    ("claude-3-7-sonnet-latest", {}, None, 32_000),
    ("claude-3-5-haiku-latest", {}, None, 8192),
    ("claude-3-opus-20240229", {}, None, 4096),
    ("glm-4.6", {}, None, 4096),  # an Anthropic-compatible server's model
    ("claude-sonnet-4-5", {"max_tokens": 2000}, None, 2000),  # the profile's own
    ("claude-sonnet-4-5", {"max_tokens": 2000}, 150, 150),  # what is left of a budget
    ("claude-3-opus-20240229", {}, 3000, 3000),
])
async def test_fake_max_tokens_from_the_profile_the_model_and_the_budget(
        fake_llm: Any, http: Any, sleep: RecordingSleep, model: str, extra: dict[str, Any], cap: int | None,
        sent: int) -> None:
    fake_llm.push(Reply(text="ok"))
    profile = ProviderProfile(name="claude", kind="anthropic", base_url=f"{fake_llm.url}/anthropic", extra=extra)
    p = AnthropicProvider(profile, KEY, http, retry=RetryPolicy(max_attempts=1, sleep=sleep))
    request = ChatRequest(model=model, system="", messages=ask().messages, max_tokens=cap)
    await collect(p, request)
    assert fake_llm.last.body["max_tokens"] == sent


async def test_fake_error_body_never_leaks_the_key(fake_llm: Any, http: Any, sleep: RecordingSleep, caplog: Any) -> None:
    fake_llm.push(Fail(401, {"type": "error", "error": {"type": "authentication_error",
                                                        "message": f"invalid x-api-key {KEY}"}}))
    err = await failure(provider(f"{fake_llm.url}/anthropic", http, sleep), ask())
    assert err.message == "claude: invalid x-api-key [REDACTED] (authentication_error) (HTTP 401)"
    assert err.code == "provider_auth" and KEY not in caplog.text


# --------------------------------------------------------------------------- the fake is well-formed


async def test_official_sdk_parses_the_fake_stream(fake_llm: Any) -> None:
    from anthropic import AsyncAnthropic

    fake_llm.push(Reply(text="Hello there", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_9")],
                        input_tokens=2500, output_tokens=8, cache_read_tokens=2000, cache_write_tokens=400),
                  Reply(text="again", input_tokens=2500, output_tokens=8, cache_read_tokens=2400, usage_at_end=True))
    client = AsyncAnthropic(base_url=f"{fake_llm.url}/anthropic", api_key="sk-ant-fake", max_retries=0)
    try:
        async with client.messages.stream(model="claude-test", max_tokens=100,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            message = await stream.get_final_message()
        async with client.messages.stream(model="claude-test", max_tokens=100,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            restated = (await stream.get_final_message()).usage
    finally:
        await client.close()
    assert message.stop_reason == "tool_use"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens,
            usage.output_tokens) == (100, 2000, 400, 8)
    assert (restated.input_tokens, restated.cache_read_input_tokens, restated.cache_creation_input_tokens,
            restated.output_tokens) == (100, 2400, 0, 8)
    assert message.content[0].type == "text" and message.content[0].text == "Hello there"
    tool = message.content[1]
    assert (tool.type, tool.id, tool.name, tool.input) == ("tool_use", "toolu_9", "get_weather", {"city": "Paris"})


async def test_official_sdk_parses_the_fake_thinking_stream(fake_llm: Any) -> None:
    from anthropic import AsyncAnthropic

    fake_llm.push(Reply(reasoning="Let me think. ", signature="c2lnbmF0dXJl", redacted="b3BhcXVl", text="Done.",
                        tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_3"),
                                    FakeToolCall("get_weather", {"city": "Bergen"}, id="toolu_4", thinking="And Bergen.",
                                                 thinking_signature="YmVyZ2Vu", text="Bergen too.")]))
    client = AsyncAnthropic(base_url=f"{fake_llm.url}/anthropic", api_key="sk-ant-fake", max_retries=0)
    try:
        async with client.messages.stream(model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                          thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
            message = await stream.get_final_message()
    finally:
        await client.close()
    thinking, redacted, text, tool, interleaved, between, second = message.content
    assert (thinking.type, thinking.thinking, thinking.signature) == ("thinking", "Let me think. ", "c2lnbmF0dXJl")
    assert (redacted.type, redacted.data) == ("redacted_thinking", "b3BhcXVl")
    assert (text.type, text.text, tool.type, tool.input) == ("text", "Done.", "tool_use", {"city": "Oslo"})
    assert (interleaved.type, interleaved.thinking, interleaved.signature) == ("thinking", "And Bergen.", "YmVyZ2Vu")
    assert (between.type, between.text) == ("text", "Bergen too.")
    assert (second.type, second.id, second.input) == ("tool_use", "toolu_4", {"city": "Bergen"})
