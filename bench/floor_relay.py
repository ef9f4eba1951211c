"""The floor relay: the least Python can do for the relay, to show what this machine allows.

No HTTP client library and no stream task: each upstream connection is a bare asyncio protocol
(keep-alive, pooled) that writes the request itself and, inside `data_received`, cuts the chunked
body into SSE events, decodes each and writes its `message.delta` frame straight to the client's
socket. The command side is the bare relay's (`bare_relay.serve_relay`). Nothing stored, no
history, no retries, no timeouts, no error handling beyond "the connection closed": a reference
for the relay benchmark's figures, not a server anyone should run.
"""

from __future__ import annotations

import asyncio
import json
from multiprocessing.connection import Connection
from typing import Any, Callable

from .bare_relay import BODY, Reply, envelope_maker, serve_relay, status_frame, text_frame

_BODY = json.dumps(BODY).encode()
_REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-bench-not-a-real-key\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY)


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; serves one reply at a time, then rejoins the pool."""

    def __init__(self, pool: list["_Upstream"]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.in_body = False
        self.on_payload: Callable[[bytes], None] = lambda payload: None
        self.done: asyncio.Future[str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.done is not None and not self.done.done():
            self.done.set_result("error")

    def start(self, on_payload: Callable[[bytes], None], done: asyncio.Future[str]) -> None:
        self.on_payload, self.done, self.in_body, self.buf = on_payload, done, False, b""
        assert self.transport is not None
        self.transport.write(_REQUEST)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.in_body:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buf = buf
                return
            self.in_body, buf = True, buf[head_end + 4:]
        pos, n = 0, len(buf)
        while pos < n:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end], 16)
            if line_end + 4 + size > n:
                break  # the chunk is not all here yet
            if size == 0:  # the body's end: the connection is free again
                self.buf, done, self.done = b"", self.done, None
                self.pool.append(self)
                if done is not None and not done.done():
                    done.set_result("completed")
                return
            for event in buf[line_end + 2:line_end + 2 + size].split(b"\n\n"):
                if event:
                    self.on_payload(event[6:])  # after "data: "
            pos = line_end + 4 + size
        self.buf = buf[pos:]


def floor_relay_server(conn: Connection, up_port: int) -> None:
    async def make_reply(state: dict[str, Any]) -> Reply:
        loop = asyncio.get_running_loop()
        pool: list[_Upstream] = []
        envelope = envelope_maker()
        encode_str = json.encoder.encode_basestring  # type: ignore[attr-defined]

        async def close() -> None:
            for upstream in list(pool):
                if upstream.transport is not None:
                    upstream.transport.close()
        state["close"].append(close)

        async def reply(transport: Any, sid: str, run_id: str) -> None:
            head = f'{{"message_id":"msg_{run_id}","run_id":"{run_id}","skill":"assistant","text":'

            def on_payload(payload: bytes) -> None:
                if payload == b"[DONE]":
                    return
                choices = json.loads(payload)["choices"]
                text = choices[0]["delta"].get("content") if choices else None
                if text:
                    transport.write(text_frame(envelope(sid, "message.delta", f"{head}{encode_str(text)}}}")))

            if pool:
                upstream = pool.pop()
            else:
                _, upstream = await loop.create_connection(lambda: _Upstream(pool), "127.0.0.1", up_port)
            done: asyncio.Future[str] = loop.create_future()
            upstream.start(on_payload, done)
            transport.write(status_frame(envelope, sid, run_id, await done))
        return reply

    serve_relay(conn, make_reply)
