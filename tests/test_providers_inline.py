"""The inline reader: text handed to the agent's sink inside the network read that brought it.

Each test runs a real provider against a real loopback server whose writes the test paces, so
"inside the read" is observable: the sink has the text while the stream has yielded nothing.
The dialect suites (`test_providers_openai|anthropic|ollama`) run every case with both readers.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import ProviderProfile, TextPart
from opencode_agent.core.providers.base import ChatMessage, ChatRequest, Finish, TextDelta, UsageReport
from opencode_agent.core.providers.http import RetryPolicy
from opencode_agent.core.providers.inline import InlineBody
from opencode_agent.core.providers.openai import OpenAIProvider
from opencode_agent.tests.fakes.llm_servers import RecordingSleep, http, read_stream, sse  # noqa: F401  (fixture)

REQUEST = ChatRequest(model="m", system="", messages=[ChatMessage("user", [TextPart(text="hi")])])
Writer = Callable[[web.StreamResponse], Awaitable[None]]


def token(text: str) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


END = (sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
       + sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}) + b"data: [DONE]\n\n")


async def read_while_held(provider: OpenAIProvider, release: asyncio.Event) -> tuple[list[str], list[Any]]:
    """Read a stream whose server sends "a" then waits for `release`: the sink must have "a"
    while the stream has yielded nothing. Returns what the sink got and what was yielded."""
    sunk: list[str] = []
    yielded: list[Any] = []

    async def consume() -> None:
        async for event in provider.stream(REQUEST, lambda text: sunk.append(text) or True):
            yielded.append(event)

    task = asyncio.create_task(consume())
    for _ in range(300):
        if sunk:
            break
        await asyncio.sleep(0.01)
    assert sunk == ["a"] and yielded == []  # inside the read
    release.set()
    await task
    return sunk, yielded


async def failing_stream(provider: OpenAIProvider) -> tuple[list[str], ProviderError, OpenAIProvider]:
    """Read a stream that must fail: the text its sink got, the error, the provider."""
    sunk: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for _ in provider.stream(REQUEST, lambda t: sunk.append(t) or True):
            pass
    return sunk, info.value, provider


@pytest.fixture
async def serve(aiohttp_server: Any, http: Any) -> Callable[..., Awaitable[OpenAIProvider]]:
    """`await serve(writer, ...)`: a provider whose requests get bodies written by `writer`s, in turn."""
    async def start(*writers: Writer, read_timeout: float | None = None, compress: bool = False) -> OpenAIProvider:
        queue = list(writers)

        async def completions(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            if compress:
                response.enable_compression(web.ContentCoding.gzip)
            await response.prepare(request)
            await queue.pop(0)(response)
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        server = await aiohttp_server(app)
        extra = {"read_timeout": read_timeout} if read_timeout else {}
        profile = ProviderProfile(name="p", kind="openai", base_url=str(server.make_url("/v1")), extra=extra)
        return OpenAIProvider(profile, None, http, retry=RetryPolicy(sleep=RecordingSleep()))
    return start


async def test_text_reaches_the_sink_inside_the_read(serve: Any) -> None:
    """The server holds its reply after "a": the sink has it though the stream yielded nothing."""
    release = asyncio.Event()

    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await release.wait()
        await response.write(token("b") + END)

    sunk, yielded = await read_while_held(await serve(body), release)
    assert sunk == ["a", "b"]
    assert yielded == [UsageReport(3, 2), Finish("stop")]


async def test_declined_text_and_text_behind_a_held_event_keep_their_order(serve: Any) -> None:
    """Text the sink declines is yielded; text arriving while the caller holds a yielded event
    waits behind it rather than overtaking it through the sink."""
    sent_b = asyncio.Event()
    go_on = asyncio.Event()

    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await asyncio.sleep(0.05)
        await response.write(token("b"))
        sent_b.set()
        await go_on.wait()
        await response.write(token("c") + END)

    provider = await serve(body)
    order: list[str] = []
    asked: list[str] = []

    def sink(text: str) -> bool:
        asked.append(text)
        if text == "a":
            return False  # not announced yet, say
        order.append(f"sink {text}")
        return True

    async for event in provider.stream(REQUEST, sink):
        if isinstance(event, TextDelta):
            order.append(f"yield {event.text}")
            if event.text == "a":
                await sent_b.wait()
                await asyncio.sleep(0.05)  # "b" arrives while "a" is held
                go_on.set()
    assert order == ["yield a", "yield b", "sink c"]
    assert asked == ["a", "c"]  # "b" was never offered: it had to wait behind "a"


async def test_the_connection_is_reused_and_the_protocol_restored(serve: Any, http: Any) -> None:
    async def body(response: web.StreamResponse) -> None:
        for text in ("x", "y"):
            await response.write(token(text))
            await asyncio.sleep(0.01)
        await response.write(END)

    provider = await serve(body, body, body)
    protocols = set()
    original = InlineBody.attach.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, response: Any, *args: Any) -> Any:
        protocols.add(response.connection.protocol)
        return original(cls, response, *args)

    InlineBody.attach = classmethod(spy)  # type: ignore[assignment]
    try:
        for _ in range(3):
            sunk: list[str] = []
            events = [e async for e in provider.stream(REQUEST, lambda t: sunk.append(t) or True)]
            assert "".join(sunk) == "xy" and events == [UsageReport(3, 2), Finish("stop")]
    finally:
        InlineBody.attach = classmethod(original)  # type: ignore[assignment]
    assert len(protocols) == 1  # one pooled keep-alive connection served all three
    protocol = protocols.pop()
    assert "data_received" not in vars(protocol) and "connection_lost" not in vars(protocol)


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


RAW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
async def raw_upstream(http: Any) -> Any:
    """`await raw_upstream(reply)`: (a provider, the count of connections made) for a bare asyncio
    server that answers each request with `reply(transport)`: the bytes on the wire are the test's."""
    servers: list[asyncio.Server] = []

    async def start(reply: Callable[[Any], Awaitable[None]]) -> tuple[OpenAIProvider, list[int]]:
        connections = [0]

        class Upstream(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                connections[0] += 1
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    asyncio.get_running_loop().create_task(reply(self.transport))

        server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        profile = ProviderProfile(name="p", kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                  extra={"read_timeout": 2})
        return OpenAIProvider(profile, None, http), connections
    yield start
    for server in servers:
        server.close()


async def test_the_end_of_the_body_in_one_read_with_the_last_tokens(raw_upstream: Any) -> None:
    """A server that writes the finish, the usage, [DONE] and the closing chunk in one write
    (several HTTP chunks in one read): taking them lets aiohttp re-enter the reader, which must
    still decode everything once and in order. Three replies on one keep-alive connection."""
    async def reply(transport: Any) -> None:
        transport.write(RAW_HEAD + http_chunk(token("")))
        for text in ("one ", "two"):
            await asyncio.sleep(0.01)
            transport.write(http_chunk(token(text)))
        await asyncio.sleep(0.01)
        transport.write(b"".join(http_chunk(p + b"\n\n") for p in END.split(b"\n\n")[:-1]) + b"0\r\n\r\n")

    provider, connections = await raw_upstream(reply)
    for _ in range(3):
        sunk: list[str] = []
        events = [e async for e in provider.stream(REQUEST, lambda t: sunk.append(t) or True)]
        assert "".join(sunk) == "one two" and events == [UsageReport(3, 2), Finish("stop")]
    assert connections == [1]


async def test_a_burst_of_tiny_chunks_aiohttp_holds_back_is_read_whole(raw_upstream: Any) -> None:
    """More tiny HTTP chunks in one read than aiohttp keeps unread (`read_bufsize // 16`): its
    parser pauses mid-read and parses the rest only when the reader resumes it, through
    `data_received(b"")` from inside our own read. The end of the body is in that rest."""
    body = token("t ") * 4000 + END

    async def reply(transport: Any) -> None:
        transport.write(RAW_HEAD + http_chunk(token("a ")))
        await asyncio.sleep(0.05)
        transport.write(b"".join(http_chunk(body[i:i + 4]) for i in range(0, len(body), 4)) + b"0\r\n\r\n")

    provider, _ = await raw_upstream(reply)
    events = await read_stream(provider, REQUEST, "inline")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "a " + "t " * 4000
    assert events[-2:] == [UsageReport(3, 2), Finish("stop")]


async def test_closing_the_stream_stops_the_sink_at_once(serve: Any) -> None:
    async def body(response: web.StreamResponse) -> None:
        for i in range(200):
            await response.write(token(f"{i} "))
            await asyncio.sleep(0.005)
        await response.write(END)

    async def short(response: web.StreamResponse) -> None:
        await response.write(token("next") + END)

    provider = await serve(body, short)
    sunk: list[str] = []
    stream = provider.stream(REQUEST, lambda t: sunk.append(t) or True)
    reading = asyncio.ensure_future(stream.__anext__())
    while len(sunk) < 3:
        await asyncio.sleep(0.005)
    reading.cancel()  # the run was aborted
    with pytest.raises(asyncio.CancelledError):
        await reading
    await stream.aclose()
    count = len(sunk)
    await asyncio.sleep(0.1)
    assert len(sunk) == count < 200
    # The next request works (its whole body may come with its head: then nothing is hooked).
    assert await read_stream(provider, REQUEST, "inline") == [TextDelta("next"), UsageReport(3, 2), Finish("stop")]


async def test_a_failing_sink_fails_the_stream(serve: Any) -> None:
    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await asyncio.sleep(0.02)
        await response.write(token("b") + END)

    provider = await serve(body)

    def sink(text: str) -> bool:
        raise RuntimeError("the bus is closed")

    with pytest.raises(RuntimeError, match="the bus is closed"):
        async for _ in provider.stream(REQUEST, sink):
            pass


async def test_a_stall_after_some_text_is_caught(serve: Any) -> None:
    release = asyncio.Event()

    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await release.wait()

    provider = await serve(body, read_timeout=0.2)
    sunk: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(ProviderError) as info:
            async for _ in provider.stream(REQUEST, lambda t: sunk.append(t) or True):
                pass
    finally:
        release.set()
    assert sunk == ["a"]
    assert info.value.code == "provider_stalled" and info.value.message == "p: stream stalled: no data for 0.2s"
    assert 0.2 <= time.monotonic() - started < 2
    assert provider.retry.sleep.waits == []  # type: ignore[attr-defined]  (text went out: no retry)


async def test_malformed_data_after_some_text_is_a_broken_stream_not_retried(serve: Any) -> None:
    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await asyncio.sleep(0.02)
        await response.write(b"data: {not json\n\n")

    sunk, error, provider = await failing_stream(await serve(body))
    assert sunk == ["a"] and error.code == "provider_stream_broken"
    assert provider.retry.sleep.waits == []  # type: ignore[attr-defined]


def _chunk(choices: Any, **more: Any) -> bytes:
    return sse({"id": "c", "object": "chat.completion.chunk", "choices": choices, **more})


TEXT_ONLY_CASES = [
    (_chunk([{"index": 0, "delta": {"content": 'héllo "q" \\ ✓'}, "finish_reason": None}]), 'héllo "q" \\ ✓'),
    (_chunk([{"index": 0, "delta": {"content": "x"}}], usage=None), "x"),
    (_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]), None),
    (_chunk([{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}]), None),
    (_chunk([], usage={"prompt_tokens": 1, "completion_tokens": 2}), None),
    (_chunk([{"index": 0, "delta": {"content": "t", "tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]), None),
    (_chunk([{"index": 1, "delta": {"content": "other choice"}}]), None),
    # Reasoning is kept for the turn's calls, never text: a delta with both is the decoder's.
    (_chunk([{"index": 0, "delta": {"content": "t", "reasoning_content": "r"}}]), None),
    (_chunk([{"index": 0, "delta": {"content": "t", "reasoning": "r"}}]), None),
    (_chunk([{"index": 0, "delta": {"content": "t", "reasoning_content": None}}]), "t"),  # DeepSeek's answer
    (_chunk([{"index": 0, "delta": {"content": "t", "refusal": "no"}}]), None),
    (sse({"error": {"message": "boom"}}), None),
    (b"data: [DONE]\n\n", None),
    (_chunk([{"index": 0, "delta": {"content": "a"}}]) * 2, None),  # two events in one read
    (_chunk([{"index": 0, "delta": {"content": "a"}}]).replace(b"\n\n", b"\r\n\r\n"), None),
    (b"data: {not json\n\n", None),
]


@pytest.mark.parametrize(("chunk", "text"), TEXT_ONLY_CASES)
async def test_the_text_only_shortcut_agrees_with_the_full_decoder(http: Any, chunk: bytes, text: str | None) -> None:
    """The inline reader's shortcut answers only where full decoding yields that one text delta,
    and leaves the decoder as full decoding would."""
    p = OpenAIProvider(ProviderProfile(name="p", kind="openai", base_url="http://127.0.0.1:9/v1"), None, http)
    short, full = p.decoder(), p.decoder()
    assert short.text_only(chunk) == text
    if text is None:
        return
    assert list(full.feed(chunk)) == [TextDelta(text)]
    keys = ("finish_reason", "usage", "emitted", "done", "reasoning", "refused")
    assert {k: getattr(short, k) for k in keys} == {k: getattr(full, k) for k in keys}
    assert short.calls.slots == full.calls.slots == []


def test_only_asyncio_transports_are_hooked() -> None:
    """A loop that binds a protocol's methods once (uvloop) would never call the hook."""
    class Transport:
        pass

    Transport.__module__ = "uvloop.loop"

    class Protocol:
        transport = Transport()

        def data_received(self, data: bytes) -> None: ...

        def connection_lost(self, exc: BaseException | None) -> None: ...

    class Response:
        class connection:  # noqa: N801 - shaped like aiohttp's
            protocol = Protocol()

    assert InlineBody.attach(Response(), None, None, None, None) is None  # type: ignore[arg-type]
    assert "data_received" not in vars(Response.connection.protocol)


async def test_a_connection_dropped_mid_body_is_a_broken_stream(serve: Any) -> None:
    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a"))
        await asyncio.sleep(0.02)
        assert response._req is not None and response._req.transport is not None
        response._req.transport.close()  # the server goes away in the middle of a chunked body

    sunk, error, provider = await failing_stream(await serve(body))
    assert sunk == ["a"] and error.code == "provider_stream_broken"
    assert "connection lost mid-stream" in error.message
    assert provider.retry.sleep.waits == []  # type: ignore[attr-defined]


async def test_a_compressed_body_is_read_whole(serve: Any) -> None:
    """A gzip body: aiohttp's decompressor holds data back and resumes through the reader's own
    reads, so none of those resumptions may be skipped."""
    burst = token("t ") * 20_000  # about 1.5 MB that compresses to a few kB: more than one
    # decompression step (256 KiB) in one read, so aiohttp pauses and resumes mid-read

    async def body(response: web.StreamResponse) -> None:
        await response.write(token("a "))
        await asyncio.sleep(0.02)
        await response.write(burst)
        await asyncio.sleep(0.02)
        await response.write(END)

    provider = await serve(body, compress=True)
    events = await read_stream(provider, REQUEST, "inline")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "a " + "t " * 20_000
    assert events[-2:] == [UsageReport(3, 2), Finish("stop")]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_text_reaches_the_sink_over_tls(aiohttp_server: Any, tmp_path: Any) -> None:
    """Real providers are https: asyncio's TLS transport calls the hooked protocol the same way."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    release = asyncio.Event()

    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(token("a"))
        await release.wait()
        await response.write(token("b") + END)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app, ssl=context)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        profile = ProviderProfile(name="p", kind="openai", base_url=f"https://127.0.0.1:{server.port}/v1")
        sunk, yielded = await read_while_held(OpenAIProvider(profile, None, session), release)
    assert sunk == ["a", "b"] and yielded == [UsageReport(3, 2), Finish("stop")]
