"""The shared HTTP layer: session settings, retry policy, error parsing, the incremental line and
SSE parsers, stall detection, the registry, and that an API key never reaches an exception or a
log line."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from typing import Any

import pytest

from opencode_agent.core.errors import BadRequest, ProviderError
from opencode_agent.core.protocol import ProviderPatch, ProviderProfile, TextPart
from opencode_agent.core.providers.anthropic import AnthropicProvider
from opencode_agent.core.providers.base import ChatMessage, ChatRequest, Finish, Provider, TextDelta, UsageReport
from aiohttp import web

from opencode_agent.core.providers.http import (
    LineParser, LineTooLong, RetryPolicy, SseEvent, SseParser, create_session, error_details, parse_retry_after,
)
from opencode_agent.core.providers.ollama import OllamaProvider
from opencode_agent.core.providers.openai import OpenAIProvider
from opencode_agent.core.providers.registry import build_provider, provider_for
from opencode_agent.core.providers.profiles import ProviderProfiles
from opencode_agent.core.secrets import SecretStore
from opencode_agent.tests.fakes.llm_servers import (  # noqa: F401  (fixture)
    Fail, RecordingSleep, Reply, Stream, anthropic_error_event, closed_port, joined, fake_llm, http, read_stream, sse,
)

REQUEST = ChatRequest(model="m", system="", messages=[ChatMessage("user", [TextPart(text="hi")])])


async def collect(p: Provider, request: ChatRequest = REQUEST) -> list[Any]:
    return [event async for event in p.stream(request)]


async def test_session_settings() -> None:
    session = create_session(max_connections=7, sock_read=33)
    try:
        assert session.connector is not None
        assert (session.connector.limit, session.connector.limit_per_host) == (7, 0)
        assert (session.timeout.total, session.timeout.sock_connect, session.timeout.sock_read) == (None, 10, 33)
    finally:
        await session.close()
    default = create_session()
    try:
        assert default.connector.limit == 256 and default.timeout.sock_read == 120  # type: ignore[union-attr]
    finally:
        await default.close()


def err(retryable: bool = True, retry_after: float | None = None) -> ProviderError:
    return ProviderError("x", retryable=retryable, retry_after=retry_after)


def test_retry_policy_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=8.0, jitter=0.5, rng=random.Random(7))
    delays = [policy.delay_for(n, err()) for n in range(1, 7)]
    caps = [1, 2, 4, 8, 8, 8]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(delays, caps))  # type: ignore[operator]
    assert len(set(delays)) == len(delays)
    exact = RetryPolicy(base_delay=1.0, jitter=0.0)
    assert [exact.delay_for(n, err()) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_retry_policy_limits() -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_after=30)
    assert policy.delay_for(1, err(retry_after=12.5)) == 12.5
    assert policy.delay_for(1, err(retry_after=31)) is None  # too long: let the person decide
    assert policy.delay_for(3, err()) is None  # attempts used up
    assert policy.delay_for(1, err(retryable=False)) is None
    assert RetryPolicy.from_extra({"max_attempts": 1}).max_attempts == 1
    assert RetryPolicy.from_extra({"max_attempts": "9"}).max_attempts == 4


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "2"}) == 2.0
    assert parse_retry_after({}) is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (parse_retry_after({"retry-after": later}) or 0) <= 60
    assert parse_retry_after({"retry-after": "not a date"}) is None


@pytest.mark.parametrize(("body", "expected"), [
    ('{"error": {"message": "Bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}', ("Bad key", "invalid_api_key")),
    ('{"error": {"message": "Quota", "type": "insufficient_quota", "code": null}}', ("Quota", "insufficient_quota")),
    ('{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}', ("Overloaded", "overloaded_error")),
    ('{"error": "model not found"}', ("model not found", None)),
    ('[{"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}]', ("Resource exhausted", "RESOURCE_EXHAUSTED")),
    ('{"object": "error", "message": "max_tokens too large", "type": "BadRequestError", "code": 400}', ("max_tokens too large", "BadRequestError")),
    ("<html>Bad Gateway</html>", (None, None)),
])
def test_error_details(body: str, expected: tuple[str | None, str | None]) -> None:
    assert error_details(body) == expected


async def test_non_json_error_body_is_quoted(fake_llm: Any, http: Any) -> None:
    fake_llm.push(Fail(502, "<html>Bad Gateway</html>"))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http,
                       retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ProviderError) as info:
        await collect(p)
    assert info.value.message == "p: <html>Bad Gateway</html> (HTTP 502)" and info.value.retryable


async def test_an_error_body_sent_in_pieces_is_read_whole(aiohttp_server: Any, http: Any) -> None:
    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        body = json.dumps({"error": {"message": "context too long: " + "x" * 3000, "code": "context_length_exceeded"}})
        await resp.write(body[:100].encode())
        await asyncio.sleep(0.05)
        await resp.write(body[100:].encode())
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app)
    profile = ProviderProfile(name="p", kind="openai", base_url=str(server.make_url("/v1")))
    with pytest.raises(ProviderError) as info:
        await collect(OpenAIProvider(profile, None, http, retry=RetryPolicy(max_attempts=1)))
    assert info.value.message.startswith("p: context too long: xxx") and info.value.code == "provider_context_exceeded"
    assert "(context_length_exceeded) (HTTP 400)" in info.value.message


async def test_x_should_retry_header_wins(fake_llm: Any, http: Any) -> None:
    sleep = RecordingSleep()
    fake_llm.push(Fail(500, {"error": {"message": "nope"}}, {"x-should-retry": "false"}))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http,
                       retry=RetryPolicy(sleep=sleep))
    with pytest.raises(ProviderError) as info:
        await collect(p)
    assert not info.value.retryable and sleep.waits == []


async def test_sse_framing_crlf_comments_multiline_and_long_lines(fake_llm: Any, http: Any) -> None:
    long_text = "x" * 300_000  # longer than aiohttp's readline limit
    chunk = '{"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}' % long_text
    fake_llm.push(Stream([
        b": keep-alive comment\r\n\r\n",
        b'data: {"choices":[{"index":0,\r\ndata: "delta":{"content":"a"},"finish_reason":null}]}\r\n\r\n',
        ("data: " + chunk[:1000]).encode(), (chunk[1000:] + "\n\n").encode(),
        b'data:{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http)
    events = await collect(p)
    assert joined(events) == [TextDelta("a" + long_text), Finish("stop")]


async def test_an_abandoned_stream_frees_its_connection(fake_llm: Any, http: Any) -> None:
    fake_llm.push(Stream([sse({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]})], stall_after=1),
                  Reply(text="second"))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http)
    stream = p.stream(REQUEST)
    assert await stream.__anext__() == TextDelta("a")
    await stream.aclose()  # the caller aborted: the half-read response is closed, not pooled
    assert await collect(p) == [TextDelta("second"), UsageReport(11, 7), Finish("stop")]


# --------------------------------------------------------------------------- incremental parsers

SSE_BODY = (
    ": keep-alive\r\n\r\n"
    "event: greeting\r\ndata: h\u00e9llo w\u00f6rld \u2713\r\n\r\n"
    "data: first line\ndata:second line\ndata\n\n"
    'id: 7\nretry: 10\ndata: {"n": 1}\n\n'
    "event: named but empty\n\n"
    "data: a\r\n\n"
    "data: never finished"
).encode()
SSE_EVENTS = [
    SseEvent("greeting", "h\u00e9llo w\u00f6rld \u2713"),
    SseEvent(None, "first line\nsecond line\n"),
    SseEvent(None, '{"n": 1}'),
    SseEvent(None, "a"),
]


def feed_all(parser: Any, pieces: list[bytes]) -> list[Any]:
    out = [item for piece in pieces for item in parser.feed(piece)]
    return out + parser.finish()


def test_sse_parser_gives_the_same_events_however_the_body_is_cut() -> None:
    assert feed_all(SseParser(), [SSE_BODY]) == SSE_EVENTS
    assert feed_all(SseParser(), [SSE_BODY[i:i + 1] for i in range(len(SSE_BODY))]) == SSE_EVENTS
    for cut in range(1, len(SSE_BODY)):  # every cut, through \r\n and inside UTF-8 characters
        assert feed_all(SseParser(), [SSE_BODY[:cut], SSE_BODY[cut:]]) == SSE_EVENTS, cut


def test_sse_parser_one_event_per_read_keeps_what_earlier_reads_left() -> None:
    parser = SseParser()
    assert parser.feed(b"data: plain\n\n") == [SseEvent(None, "plain")]
    assert parser.feed(b"event: delta\n") == []
    assert parser.feed(b"data: named\n\n") == [SseEvent("delta", "named")]
    assert parser.feed(b"data: one\n") == []
    assert parser.feed(b"data: two\n\n") == [SseEvent(None, "one\ntwo")]
    assert parser.feed(b"data: par") == []
    assert parser.feed(b"tial\n\n") == [SseEvent(None, "partial")]
    assert parser.feed(b"data: cr\r\n\n") == [SseEvent(None, "cr")]
    assert parser.feed(b"data: \xe2\x9c") == []
    assert parser.feed(b"\x93\n\n") == [SseEvent(None, "\u2713")]
    assert parser.feed(b"data: bad \xff\n\n") == [SseEvent(None, "bad \ufffd")]


KEEP_ALIVES = b"data:\n\n" + b"data: \r\n\r\n" + b"event: ping\ndata:\n\n" + b"data:\ndata: \n\n" + b"data\n\n"


def test_sse_parser_dispatches_no_event_with_empty_data() -> None:
    """Bare `data:` keep-alives (gateways send them) carry nothing: no event, however cut, and
    the `event:` name of one does not stick to the next event."""
    body = KEEP_ALIVES + b"data: {}\n\n" + b"data: \n\n"
    assert feed_all(SseParser(), [body]) == [SseEvent(None, "{}")]
    for cut in range(1, len(body)):
        assert feed_all(SseParser(), [body[:cut], body[cut:]]) == [SseEvent(None, "{}")], cut
    parser = SseParser()  # each keep-alive alone in its read (the one-event fast path)
    assert [parser.feed(piece) for piece in (b"data: \n\n", b"event: x\n", b"data: \n\n", b"data: 1\n\n")] == [
        [], [], [], [SseEvent(None, "1")]]


@pytest.mark.parametrize("mode", ["task", "inline"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_keep_alives_with_empty_data_do_not_break_a_stream(fake_llm: Any, http: Any, kind: str,
                                                                  mode: str) -> None:
    from opencode_agent.tests.fakes.llm_servers import anthropic_events, openai_chunks

    chunks = (openai_chunks if kind == "openai" else anthropic_events)(Reply(text="one two three"))
    # Before any output, mid-text (each in a read of its own, then all in one) and before the end.
    fake_llm.push(Stream([b"data:\n\n", *chunks[:3], b"data: \n\n", KEEP_ALIVES, *chunks[3:-1], b"data:\n\n",
                          chunks[-1]]))
    path, cls = ("/v1", OpenAIProvider) if kind == "openai" else ("/anthropic", AnthropicProvider)
    p = cls(ProviderProfile(name="p", kind=kind, base_url=fake_llm.url + path), None, http,
            retry=RetryPolicy(max_attempts=1))
    assert joined(await read_stream(p, REQUEST, mode)) == [TextDelta("one two three"), UsageReport(11, 7),
                                                           Finish("stop")]


def test_line_parser_lines_endings_utf8_and_the_last_line() -> None:
    body = '{"a": "\u00e9"}\r\n\n{"b": 2}\n{"c": "\u2713"}'.encode()
    expected = ['{"a": "\u00e9"}', "", '{"b": 2}', '{"c": "\u2713"}']
    for cut in range(len(body) + 1):
        assert feed_all(LineParser(), [body[:cut], body[cut:]]) == expected, cut
    assert feed_all(LineParser(), [body[i:i + 1] for i in range(len(body))]) == expected


def test_line_parser_takes_a_lone_cr_as_a_line_end_however_the_body_is_cut() -> None:
    """SSE allows `\r`, `\n` and `\r\n`; a `\r` ending a read ends its line at once, and a `\n`
    opening the next read is the rest of that `\r\n`, not an empty line."""
    body = 'data: {"a": "\u00e9"}\r\rdata: b\r\n\r\ndata: c\n\ndata: d\r\r\n{"e": "\u2713"}'.encode()
    expected = ['data: {"a": "\u00e9"}', "", "data: b", "", "data: c", "", "data: d", "", '{"e": "\u2713"}']
    assert feed_all(LineParser(), [body]) == expected
    assert feed_all(LineParser(), [body[i:i + 1] for i in range(len(body))]) == expected
    for cut in range(len(body) + 1):
        for cut2 in range(cut, len(body) + 1, 3):
            assert feed_all(LineParser(), [body[:cut], body[cut:cut2], body[cut2:]]) == expected, (cut, cut2)
    parser = LineParser()
    assert parser.feed(b"data: x\r") == ["data: x"]  # not held back for the next read
    assert parser.feed(b"\n") == [] and parser.feed(b"\n") == [""]


@pytest.mark.parametrize("mode", ["task", "inline"])
async def test_sse_with_lone_cr_line_endings(fake_llm: Any, http: Any, mode: str) -> None:
    fake_llm.push(Stream([
        b'data:{"choices":[{"index":0,"delta":{"content":"Q"},"finish_reason":null}]}\r\r',
        b'event: x\rdata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r',
        b"\r", b"data: [DONE]\r\r",
    ]))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http)
    assert joined(await read_stream(p, REQUEST, mode)) == [TextDelta("Q"), Finish("stop")]


def test_line_parser_limit_counts_the_unfinished_line_only() -> None:
    parser = LineParser(max_line=10)
    assert parser.feed(b"0123456789\n" * 3) == ["0123456789"] * 3  # finished lines are never too long
    assert parser.feed(b"01234") == [] and parser.feed(b"56789") == []
    assert parser.feed(b"\nabc") == ["0123456789"]
    with pytest.raises(LineTooLong):
        parser.feed(b"defghijk")


async def test_a_line_over_16_mb_breaks_the_stream(fake_llm: Any, http: Any) -> None:
    # Still unfinished past 16 MB (a finished line is never too long: it is already parsed).
    fake_llm.push(Stream([b"data: " + b"x" * (8 * 1024 * 1024), b"y" * (8 * 1024 * 1024)]))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http)
    with pytest.raises(ProviderError) as info:
        await collect(p)
    assert info.value.message == "p: stream line too long" and info.value.code == "provider_stream_broken"


async def test_events_before_a_failure_in_the_same_read_still_go_out(fake_llm: Any, http: Any) -> None:
    text = sse({"choices": [{"index": 0, "delta": {"content": "kept"}, "finish_reason": None}]})
    fake_llm.push(Stream([text + b"data: {corrupt\n\n"]))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http,
                       retry=RetryPolicy(max_attempts=1))
    seen: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async for event in p.stream(REQUEST):
            seen.append(event)
    assert seen == [TextDelta("kept")] and info.value.code == "provider_stream_broken"


# --------------------------------------------------------------------------- stall detection


def openai_chunk(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


async def test_a_stream_sets_no_timer_per_network_read(aiohttp_server: Any, http: Any, monkeypatch: Any) -> None:
    """aiohttp's `sock_read` moves a timer on every read; the stream's watchdog must not."""
    tokens = 100
    consumed = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(tokens):  # in lockstep with the consumer: one token per network read
            await response.write(openai_chunk(f"t{i} "))
            await consumed.wait()
            consumed.clear()
        await response.write(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + sse("[DONE]"))
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=str(server.make_url("/v1"))), None, http)
    loop = asyncio.get_running_loop()
    timers = 0
    call_at = loop.call_at

    def counting_call_at(*args: Any, **kwargs: Any) -> Any:
        nonlocal timers
        timers += 1
        return call_at(*args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    events = []
    async for event in p.stream(REQUEST):
        events.append(event)
        consumed.set()
    monkeypatch.undo()
    assert len(events) == tokens + 1 and events[-1] == Finish("stop")
    assert timers < 10, f"{timers} timers for {tokens} network reads"


async def test_a_slow_consumer_is_not_a_stall(fake_llm: Any, http: Any) -> None:
    """The watchdog measures the server: a caller that holds the stream longer than the read
    timeout, while the data waits in the buffer, still gets the whole reply."""
    fake_llm.push(Reply(text="one two three"))
    profile = ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1", extra={"read_timeout": 0.1})
    events = []
    async for event in OpenAIProvider(profile, None, http).stream(REQUEST):
        events.append(event)
        if len(events) == 1:
            await asyncio.sleep(0.35)
    assert joined(events) == [TextDelta("one two three"), UsageReport(11, 7), Finish("stop")]


async def test_a_stall_before_the_response_head(aiohttp_server: Any, http: Any) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", silent)
    server = await aiohttp_server(app)
    profile = ProviderProfile(name="p", kind="openai", base_url=str(server.make_url("/v1")), extra={"read_timeout": 0.2})
    sleep = RecordingSleep()
    started = time.monotonic()
    try:
        with pytest.raises(ProviderError) as info:
            await collect(OpenAIProvider(profile, None, http, retry=RetryPolicy(sleep=sleep)))
    finally:
        release.set()
    assert info.value.message == "p: stream stalled: no data for 0.2s" and info.value.code == "provider_stalled"
    assert sleep.waits == [] and time.monotonic() - started < 2


async def test_an_upstream_that_stops_reading_a_large_request_is_a_stall(fake_llm: Any) -> None:
    """aiohttp's read timeout starts once the body is sent: a server that never takes in a large
    body (16 MB, past what the sockets buffer) would hold the run forever. The upload has a
    deadline of the read timeout plus its size at `min_upload_rate`; a server that reads is fine."""
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await asyncio.Event().wait()  # cancelled when the server closes

    silent = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    big = ChatRequest(model="m", system="", messages=[ChatMessage("user", [TextPart(text="x" * 16_000_000)])])
    session = create_session(sock_read=0.5)
    try:
        for base, expect_stall in ((f"http://127.0.0.1:{port}/v1", True), (f"{fake_llm.url}/v1", False)):
            p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=base), None, session,
                               retry=RetryPolicy(max_attempts=1))
            p.min_upload_rate = 32_000_000  # a deadline of 0.5 + 0.5 s
            started = time.monotonic()
            if expect_stall:
                with pytest.raises(ProviderError) as info:
                    await asyncio.wait_for(collect(p, big), 10)
                assert info.value.code == "provider_stalled" and "(16,000,118 bytes) was not taken in" in info.value.message
                assert time.monotonic() - started < 5
            else:
                fake_llm.push(Reply(text="read it all"))
                assert joined(await asyncio.wait_for(collect(p, big), 10))[0] == TextDelta("read it all")
    finally:
        await session.close()
        for writer in held:  # since 3.12 `wait_closed` waits for the connections too
            writer.close()
        silent.close()
        await asyncio.wait_for(silent.wait_closed(), 5)


async def test_a_stall_after_some_events_is_caught_by_the_watchdog(fake_llm: Any, http: Any) -> None:
    fake_llm.push(Stream([openai_chunk("a"), openai_chunk("b")], stall_after=2))
    profile = ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1", extra={"read_timeout": 0.2})
    seen: list[Any] = []
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        async for event in OpenAIProvider(profile, None, http).stream(REQUEST):
            seen.append(event)
    assert joined(seen) == [TextDelta("ab")]
    assert info.value.message == "p: stream stalled: no data for 0.2s" and info.value.code == "provider_stalled"
    assert 0.2 <= time.monotonic() - started < 2


# --------------------------------------------------------------------------- the key never leaks

SECRET = "sk-live-THIS-KEY-MUST-NOT-LEAK-0123456789"


@pytest.mark.parametrize(("kind", "path"), [("openai", "/v1"), ("anthropic", "/anthropic"), ("ollama", "")])
async def test_the_key_never_appears_in_errors_or_logs(
    fake_llm: Any, http: Any, caplog: pytest.LogCaptureFixture, kind: str, path: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    echoed = {"error": {"message": f"Incorrect API key provided: {SECRET}. Header was Bearer {SECRET}", "type": "x"}}
    # A retryable failure (logged) echoing the key, then a final one; then an in-stream error.
    fake_llm.push(Fail(500, echoed), Fail(401, echoed))
    profile = ProviderProfile(name="p", kind=kind, base_url=f"{fake_llm.url}{path}")  # type: ignore[arg-type]
    p = build_provider(profile, SECRET, http, retry=RetryPolicy(max_attempts=2, sleep=RecordingSleep()))
    with pytest.raises(ProviderError) as info:
        await collect(p)
    assert "Incorrect API key provided: [REDACTED]" in info.value.message
    texts = [str(info.value), repr(info.value), info.value.message, str(info.value.details), caplog.text]
    message = f"upstream rejected {SECRET}"
    in_stream = {
        "openai": Stream([sse({"error": {"message": message}})]),
        "anthropic": Stream([anthropic_error_event("invalid_request_error", message)]),
        "ollama": Stream([json.dumps({"error": message}).encode() + b"\n"], content_type="application/x-ndjson"),
    }[kind]
    fake_llm.push(in_stream)
    with pytest.raises(ProviderError) as stream_info:
        await collect(p)
    assert "upstream rejected [REDACTED]" in stream_info.value.message
    texts.append(str(stream_info.value))
    refused = build_provider(profile.model_copy(update={"base_url": f"http://127.0.0.1:{closed_port()}"}), SECRET, http,
                             retry=RetryPolicy(max_attempts=2, sleep=RecordingSleep()))
    with pytest.raises(ProviderError) as refused_info:
        await collect(refused)
    texts += [str(refused_info.value), caplog.text]
    assert caplog.records, "the retries should have logged"
    for text in texts:
        assert SECRET not in text and "MUST-NOT-LEAK" not in text


# --------------------------------------------------------------------------- registry


async def test_build_provider_by_kind(http: Any) -> None:
    def profile(kind: str) -> ProviderProfile:
        return ProviderProfile(name="p", kind=kind, base_url="http://127.0.0.1:1")  # type: ignore[arg-type]

    assert isinstance(build_provider(profile("openai"), None, http), OpenAIProvider)
    assert isinstance(build_provider(profile("anthropic"), None, http), AnthropicProvider)
    assert isinstance(build_provider(profile("ollama"), None, http), OllamaProvider)
    with pytest.raises(BadRequest):
        build_provider(profile("echo"), None, http)
    sentinel = build_provider(profile("openai"), None, http)
    assert build_provider(profile("echo"), None, http, extra_kinds={"echo": lambda *a: sentinel}) is sentinel
    tuned = build_provider(profile("openai").model_copy(update={"extra": {"max_attempts": 2}}), None, http)
    assert tuned.retry.max_attempts == 2  # type: ignore[attr-defined]


async def test_provider_for_a_profile_name(fake_llm: Any, http: Any, data_dir: Any) -> None:
    secrets = SecretStore(data_dir, env={})
    await secrets.load()
    profiles = ProviderProfiles(data_dir, secrets, env={})
    await profiles.load()
    await profiles.patch("ollama", ProviderPatch(base_url=fake_llm.url))
    await secrets.set("ollama", "proxy-token-0123456789")
    fake_llm.push(Reply(text="hi"))
    p = await provider_for("ollama", profiles, http)
    assert await collect(p) == [TextDelta("hi"), UsageReport(11, 7), Finish("stop")]
    assert fake_llm.last.headers["Authorization"] == "Bearer proxy-token-0123456789"


# --------------------------------------------------------------------------- text joined per read


async def test_tokens_that_arrive_in_one_read_are_one_delta(aiohttp_server: Any, http: Any) -> None:
    """A server that keeps up relays each token; tokens that reached it together (its loop was
    behind, or the model sends bursts) go on as one delta, in order, nothing lost."""
    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(openai_chunk("a") + openai_chunk("b") + openai_chunk("c"))  # one read
        await asyncio.sleep(0.05)
        await resp.write(openai_chunk("d"))
        await resp.write(sse({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                              "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app)
    profile = ProviderProfile(name="p", kind="openai", base_url=str(server.make_url("/v1")))
    events = [e async for e in OpenAIProvider(profile, None, http).stream(REQUEST)]
    assert events == [TextDelta("abc"), TextDelta("d"), Finish("stop")]


def test_joining_keeps_other_events_in_place_and_text_before_a_failure() -> None:
    from opencode_agent.core.providers.base import ToolCallReady
    from opencode_agent.core.providers.http import _joined_text

    call = ToolCallReady("c1", "render", {})
    one = TextDelta("solo")
    assert list(_joined_text([one]))[0] is one  # a lone token passes through untouched
    assert list(_joined_text([TextDelta("a"), TextDelta("b"), call, TextDelta("c"), Finish("tool_calls")])) == [
        TextDelta("ab"), call, TextDelta("c"), Finish("tool_calls")]

    def failing() -> Any:
        yield TextDelta("x")
        yield TextDelta("y")
        raise ProviderError("p: boom", code="provider_error")

    seen: list[Any] = []
    with pytest.raises(ProviderError):
        for event in _joined_text(failing()):
            seen.append(event)
    assert seen == [TextDelta("xy")]


@pytest.mark.parametrize("payload", [
    '{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}',  # a lone surrogate escape
    '{"choices":[],"x":NaN}',
    '{"choices":[],"x":1e400}',
    '{"a":1,"a":2}',
    ' {"choices": [ ] } ',
])
def test_stream_payloads_decode_as_the_standard_library_reads_them(payload: str) -> None:
    """orjson (when installed) is only a faster path: what it refuses, `json` still decides."""
    from opencode_agent.core.providers.http import decode_json

    got, want = decode_json(payload), json.loads(payload)
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize("payload", ['{"choices":[}', "[1,]", '{"a":1} x', ""])
def test_malformed_stream_payloads_still_raise_value_error(payload: str) -> None:
    from opencode_agent.core.providers.http import decode_json

    with pytest.raises(ValueError):
        decode_json(payload)


def test_stream_payloads_decode_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson is optional (requirements.txt lists it as a speed-up): without it `json` reads all."""
    from opencode_agent.core.providers import http as http_module

    monkeypatch.setattr(http_module, "_orjson_loads", None)
    assert http_module.decode_json('{"choices":[{"delta":{"content":"hi"}}]}') == {"choices": [{"delta": {"content": "hi"}}]}
    with pytest.raises(ValueError):
        http_module.decode_json("{")


@pytest.mark.parametrize("body, code", [
    # OpenAI
    ({"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages "
                           "resulted in 130512 tokens.", "type": "invalid_request_error",
                "code": "context_length_exceeded"}}, "provider_context_exceeded"),
    # Anthropic
    ({"type": "error", "error": {"type": "invalid_request_error",
                                 "message": "prompt is too long: 210351 tokens > 200000 maximum"}},
     "provider_context_exceeded"),
    # llama.cpp server
    ({"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error"}}, "provider_context_exceeded"),
    # vLLM
    ({"object": "error", "message": "This model's maximum context length is 8192 tokens. However, you requested "
                                    "9000 tokens.", "type": "BadRequestError", "code": 400}, "provider_context_exceeded"),
    # Something else wrong with the request stays a plain bad request.
    ({"error": {"message": "Unrecognized request argument supplied: foo", "type": "invalid_request_error"}},
     "provider_bad_request"),
])
async def test_a_request_longer_than_the_context_says_what_to_do(fake_llm: Any, http: Any, body: Any, code: str) -> None:
    fake_llm.push(Fail(400, body))
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url=f"{fake_llm.url}/v1"), None, http,
                       retry=RetryPolicy(max_attempts=3))
    with pytest.raises(ProviderError) as info:
        await collect(p)
    assert info.value.code == code and not info.value.retryable and len(fake_llm.requests) == 1
    assert ("declare the model's real context_tokens" in info.value.message) == (code == "provider_context_exceeded")
