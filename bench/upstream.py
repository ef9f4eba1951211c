"""A fake OpenAI-compatible upstream in its own process: Chat Completions over SSE, paced.

`POST /v1/chat/completions` answers with the headers at once, the first content token `ttft`
seconds after the request arrived, then one token every 1/`rate` seconds on an absolute
schedule (no drift), then the finish chunk, the usage chunk and `[DONE]` — the chunk shapes
OpenAI streams with `stream_options.include_usage`, over HTTP/1.1 keep-alive with chunked
transfer encoding, as api.openai.com sends them. Each token's text is the CLOCK_MONOTONIC time
at which it was written and the time the request arrived (`"<sent>|<index>|<arrived> "`), so a
client on this machine can compute every token's delivery latency, and how long its request
took to reach the upstream, whichever way it came.

It is a bare `asyncio.Protocol`, not an aiohttp app: in a real deployment the model runs on
another machine, so the fake upstream should take as little of this 2-core machine's CPU as
it can from the servers being measured. Each token is one timer callback and one socket write
(no task, no sleep future, no JSON encoder): at 200 streams it needs a fraction of what an
aiohttp handler did. `tests/test_bench_upstream.py` parses its stream with the `openai` SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from .common import serve_commands

_CHUNK_HEAD = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
_STREAM_HEADERS = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")


def _chunk(choices: str, usage: str = "null") -> bytes:
    """One SSE event holding one chat.completion.chunk, as an HTTP/1.1 chunk."""
    event = b"%s%d,\"model\":\"m\",\"system_fingerprint\":null,\"choices\":%s,\"usage\":%s}\n\n" % (
        _CHUNK_HEAD, int(time.time()), choices.encode(), usage.encode())
    return b"%x\r\n%s\r\n" % (len(event), event)


def _choice(delta: str, finish: str = "null") -> str:
    return f'[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]'


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def tokens_sent_at(text: str) -> list[float]:
    """The upstream's send time of every token in a delta's text (a relay may join the tokens
    that reached it together into one delta: each still counts, with its own latency)."""
    return [float(token.split("|", 1)[0]) for token in text.split()]


def request_arrived_at(text: str) -> float:
    """When the upstream received the request that produced this text's first token."""
    return float(text.split(None, 1)[0].split("|")[2])


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.peers: set[Any] = set()
        self.late: list[float] = []


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: read a request, stream its reply, read the next."""

    def __init__(self, ttft: float, rate: float, tokens: int, stats: _Stats) -> None:
        self.ttft, self.rate, self.tokens, self.stats = ttft, rate, tokens, stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return  # the body is still arriving
        del self.buf[:end + 4 + length]
        method, path, _ = head[0].split(" ", 2)
        assert self.transport is not None
        if method == "POST" and path == "/v1/chat/completions":
            self._start_stream(time.monotonic())
        elif method == "GET" and path == "/v1/models":
            self.transport.write(_response("200 OK", json.dumps(
                {"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()))
        else:
            self.transport.write(_response("404 Not Found", b'{"error":{"message":"not found"}}'))

    def _start_stream(self, t_req: float) -> None:
        self.stats.requests += 1
        self.stats.peers.add(self.peer)
        self.busy = True
        assert self.transport is not None
        self.transport.write(_STREAM_HEADERS + _chunk(_choice('{"role":"assistant","content":""}')))
        self.timer = self.loop.call_at(t_req + self.ttft, self._token, 0, t_req)

    def _token(self, i: int, t_req: float) -> None:
        if self.transport is None:
            return
        now = time.monotonic()
        t_first = t_req + self.ttft
        if i == 0:
            self.stats.late.append(now - t_first)
        self.transport.write(_chunk(_choice(f'{{"content":"{now:.6f}|{i}|{t_req:.6f} "}}')))
        if i + 1 < self.tokens:
            self.timer = self.loop.call_at(t_first + (i + 1) / self.rate, self._token, i + 1, t_req)
            return
        self.timer = None
        self.transport.write(
            _chunk(_choice("{}", '"stop"'))
            + _chunk("[]", f'{{"prompt_tokens":20,"completion_tokens":{self.tokens},'
                           f'"total_tokens":{20 + self.tokens}}}')
            + b"%x\r\ndata: [DONE]\n\n\r\n0\r\n\r\n" % len(b"data: [DONE]\n\n"))
        self.busy = False
        self._next_request()


def upstream_server(conn: Connection, ttft: float, rate: float, tokens: int) -> None:
    stats = _Stats()
    state: dict[str, Any] = {}

    async def setup() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(ttft, rate, tokens, stats),
                                          "127.0.0.1", 0, backlog=1024)
        state["server"] = server
        return {"port": server.sockets[0].getsockname()[1], "pid": os.getpid()}

    async def handle(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "cpu":
            return time.process_time()
        if cmd[0] == "counts":
            # Requests and distinct client connections since the last call (keep-alive reuse).
            out = {"requests": stats.requests, "connections": len(stats.peers)}
            stats.requests, stats.peers = 0, set()
            return out
        if cmd[0] == "stats":
            late, stats.late = stats.late, []
            return {"requests": stats.requests, "late_first_ms": [x * 1000 for x in late]}
        raise ValueError(cmd[0])

    async def teardown() -> None:
        if "server" in state:
            state["server"].close()

    serve_commands(conn, setup, handle, teardown)
