"""A WebSocket client that stops reading: bounded memory, dropped, rejoins with `after_seq`.

The slow client is a raw socket (a tiny receive buffer, a hand-made handshake) so nothing on the
client side keeps draining it behind the test's back. While it sleeps, a healthy client on the
same session must keep getting every event in order, the server must hold at most about
`max_client_backlog` unsent bytes for the sleeper, and then drop it (close 1013). Woken up, the
sleeper reads what had reached it, rejoins with the last seq it saw and gets exactly the rest.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from typing import Any

from opencode_agent.routes import SERVICE
from wsclient import WsClient, run_final

BACKLOG = 64 << 10
WORD = "x" * 999
TEXT = " ".join([WORD] * 100)  # ~100 KB: every send makes ~400 KB of events
SENDS = 16


class RawWs:
    """A WebSocket client on a blocking socket that reads only when told to."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /opencode/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = b"\x81" + (bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n))
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame until the server's close frame (or the end of the stream)."""
        out = []
        self.sock.settimeout(10)
        while True:
            try:
                b0, b1 = self._need(2)
            except ConnectionError:
                return out
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._need(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._need(8))[0]
            out.append((b0 & 0x0F, self._need(n)))
            if b0 & 0x0F == 0x8:
                return out

    def close(self) -> None:
        self.sock.close()


async def test_slow_consumer_is_dropped_with_bounded_memory_and_rejoins(aiohttp_client: Any, make_app: Any,
                                                                        config: Any) -> None:
    config.max_client_backlog = BACKLOG
    config.echo_delay = 0.0005
    config.ring_size = 100_000
    client = await aiohttp_client(make_app())
    service = client.app[SERVICE]
    sid = (await (await client.post("/opencode/sessions", json={"skills": ["echo"]})).json())["id"]

    slow = await asyncio.to_thread(RawWs, client.server.port)
    slow.send({"id": "j", "type": "join", "session_id": sid})
    healthy = WsClient(await client.ws_connect("/opencode/ws"))
    await healthy.command("join", session_id=sid)
    room = service.bus._rooms[sid]  # noqa: SLF001
    while len(room.cursors) < 2:  # the raw client's join is in
        await healthy.command("ping")

    # Record the sleeper's unsent bytes when the bus gives up on it. (Sampling would see nothing:
    # the room's sender fills a socket's buffer in one go and never yields below the limit.)
    at_drop: list[int] = []
    real_drop = service.bus._drop  # noqa: SLF001

    async def spy_drop(room_: Any, sub: Any, reason: str) -> None:
        at_drop.append(sub.backlog())
        await real_drop(room_, sub, reason)

    service.bus._drop = spy_drop  # noqa: SLF001
    dropped_at: float | None = None
    t0 = time.monotonic()
    for _ in range(SENDS):
        sent = await healthy.command("send", session_id=sid, text=TEXT)
        run_id = sent["data"]["run_id"]
        while True:
            if dropped_at is None and service.bus.dropped:
                dropped_at = time.monotonic() - t0
            try:
                await healthy.until(run_final(run_id), timeout=0.05)
                break
            except asyncio.TimeoutError:
                continue
    elapsed = time.monotonic() - t0

    # Dropped once its unsent bytes passed the limit: the server held at most the limit plus one
    # event for it (the ring buffer, shared by every subscriber, is the only other copy).
    assert service.bus.dropped == 1, "the sleeping client was never dropped"
    assert len(room.cursors) == 1
    largest_event = max(len(json.dumps(e)) for e in healthy.events)
    assert len(at_drop) == 1 and BACKLOG < at_drop[0] <= BACKLOG + 2 * largest_event, at_drop
    # The healthy client got every event once, in order, and was never held up for long.
    seqs = [e["seq"] for e in healthy.events if e["type"] != "session.state"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert elapsed < 20

    # The sleeper wakes: it reads what reached it, then the close frame (1013).
    frames = await asyncio.to_thread(slow.frames)
    slow.close()
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1013
    got = [json.loads(p) for op, p in frames if op == 0x1]
    events = [e for e in got if "seq" in e]
    seen = [e["seq"] for e in events if e["type"] != "session.state"]
    assert seen == list(range(seen[0], seen[0] + len(seen))) if seen else True
    last = max(e["seq"] for e in events)
    assert last < healthy.events[-1]["seq"], "it was dropped before the end"

    # Rejoin with after_seq: exactly the missing events, once each, in order.
    again = WsClient(await client.ws_connect("/opencode/ws"))
    await again.command("join", session_id=sid, after_seq=last)
    final_seq = healthy.events[-1]["seq"]
    await again.until(lambda e: e["seq"] >= final_seq)
    assert not again.of_type("session.resync")
    replayed = [e["seq"] for e in again.events]
    assert replayed == list(range(last + 1, final_seq + 1))
    want = {e["seq"]: (e["type"], e["data"]) for e in healthy.events}
    assert all(want[e["seq"]] == (e["type"], e["data"]) for e in again.events)
    print(f"\nslow consumer: dropped after {dropped_at:.2f}s, unsent at drop {at_drop[0]} B "
          f"(limit {BACKLOG}), {len(seen)} events before the drop, {len(replayed)} replayed on rejoin")


async def test_slow_sse_reader_is_dropped_with_bounded_memory(aiohttp_client: Any, make_app: Any,
                                                              config: Any) -> None:
    """The same for an EventSource that stops reading: its queue stops at the limit."""
    config.max_client_backlog = BACKLOG
    config.echo_delay = 0.0005
    client = await aiohttp_client(make_app())
    service = client.app[SERVICE]
    sid = (await (await client.post("/opencode/sessions", json={"skills": ["echo"]})).json())["id"]
    at_drop: list[int] = []
    real_drop = service.bus._drop  # noqa: SLF001

    async def spy_drop(room_: Any, sub: Any, reason: str) -> None:
        at_drop.append(sub.backlog())
        await real_drop(room_, sub, reason)

    service.bus._drop = spy_drop  # noqa: SLF001

    def open_sse() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", client.server.port))
        sock.sendall(f"GET /opencode/sessions/{sid}/events?after_seq=0 HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{client.server.port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        return sock

    sock = await asyncio.to_thread(open_sse)
    healthy = WsClient(await client.ws_connect("/opencode/ws"))
    await healthy.command("join", session_id=sid)
    room = service.bus._rooms[sid]  # noqa: SLF001
    while len(room.cursors) < 2:
        await healthy.command("ping")
    for _ in range(SENDS):
        sent = await healthy.command("send", session_id=sid, text=TEXT)
        await healthy.until(run_final(sent["data"]["run_id"]), timeout=30)
        if service.bus.dropped:
            break
    assert service.bus.dropped == 1 and len(room.cursors) == 1
    largest_event = max(len(json.dumps(e)) for e in healthy.events)
    assert len(at_drop) == 1 and BACKLOG < at_drop[0] <= BACKLOG + 2 * largest_event, at_drop
    sock.close()


async def test_a_reader_that_goes_away_is_no_error(client: Any, service: Any, caplog: Any) -> None:
    """An EventSource closed mid-stream (a tab closed) is routine: no error, no traceback."""
    sid = (await (await client.post("/opencode/sessions", json={"skills": ["echo"]})).json())["id"]
    resp = await client.get(f"/opencode/sessions/{sid}/events")
    assert resp.status == 200
    sent = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": " ".join(["word"] * 300)})
    await resp.content.readline()
    resp.close()  # the reader goes away while events keep coming
    run_id = (await sent.json())["run_id"]
    await service.sessions.wait_runs(sid, [run_id])
    room = service.bus._rooms[sid]  # noqa: SLF001
    for _ in range(500):  # the server notices at its next write and lets go of the subscriber
        if not room.cursors:
            break
        await asyncio.sleep(0.01)
    assert not room.cursors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
