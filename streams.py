"""The streaming half of the logic layer: SSE and WebSocket subscribers, and WebSocket commands.

`SseSubscriber` and `WsSubscriber` are the bus's `Subscriber`s for an SSE response and for one
session joined on a socket; `WsConnection` parses a socket's command frames with the protocol
models, calls the session manager and answers each with `ack` or `error`. The routes that own
the sockets stay in `routes.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel

from .core import protocol as p
from .core.bus import Published
from .core.errors import BadRequest, OpencodeError, PayloadTooLarge
from .core.service import OpencodeService
from .core.validation import parse_json, parse_model

log = logging.getLogger("opencode.streams")


class SseSubscriber:
    """A session subscription written as Server-Sent Events (`id: seq`, `event: type`)."""

    is_panel = False

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Published | None] = asyncio.Queue()
        self._pending_bytes = 0
        self.dropped: str | None = None

    async def send(self, item: Published) -> None:
        self.send_now(item)

    def send_now(self, item: Published) -> bool:
        self._pending_bytes += len(item.text)
        self._queue.put_nowait(item)
        return True

    def backlog(self) -> int:
        return self._pending_bytes

    async def drop(self, reason: str) -> None:
        self.dropped = reason
        self._queue.put_nowait(None)

    async def stream(self, request: web.Request, until_runs: set[str] | None = None,
                     first: BaseModel | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            await self._pump(resp, until_runs, first)
        except OSError:
            pass  # the reader went away (closed tab, reset, broken pipe): routine, nothing to answer
        return resp

    async def _pump(self, resp: web.StreamResponse, until_runs: set[str] | None, first: BaseModel | None) -> None:
        if first is not None:
            await resp.write(f"event: accepted\ndata: {first.model_dump_json()}\n\n".encode())
        open_runs = set(until_runs or ())
        while until_runs is None or open_runs:  # a repeated send's runs may all have ended
            try:
                item = await asyncio.wait_for(self._queue.get(), 15.0)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                await resp.write(f"event: dropped\ndata: {json.dumps({'reason': self.dropped})}\n\n".encode())
                break
            self._pending_bytes -= len(item.text)
            ev = item.event
            await resp.write(f"id: {ev.seq}\nevent: {ev.type}\ndata: {item.text}\n\n".encode())
            if ev.type == "session.deleted":
                break  # nothing more will come: the reader is told by ending the stream
            if until_runs is not None and ev.type == "run.status":
                run = ev.data.get("run", {})
                if run.get("id") in open_runs and run.get("status") in p.FINAL_RUN_STATUSES:
                    open_runs.discard(run["id"])
                    if not open_runs:
                        break
        await resp.write_eof()


def ws_text_frame(text: str) -> bytes:
    """`text` as one final, unmasked, uncompressed RFC 6455 text frame (what a server sends)."""
    data = text.encode("utf-8")
    n = len(data)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + data


# Events a reader waits on as they happen (a reply's tokens): written at once, as are acks.
# Everything else a socket carries (status, log lines) comes in bursts at a reply's start and end.
SENT_AT_ONCE = frozenset({"message.delta"})


class WsOutbox:
    """One socket's outgoing frames (uncompressed: the same bytes for every socket).

    Why: on loopback a `send` system call is the costliest step of delivering an event, and a
    reply's start and end each publish four or five events plus the command's ack within a few
    milliseconds. Frames other than deltas and acks are therefore held up to `hold` seconds and
    leave in one write; a delta or an ack is written at once, after anything held (order is the
    bus's order). Held
    bytes past `max_held` are written at once, so a long replay is never held in memory, and
    `backlog()` counts them, so the bus's slow-consumer limit still holds.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, *,
                 hold: float = 0.003, max_held: int = 1 << 16) -> None:
        self.ws = ws
        self.transport = transport
        # A compressed socket's frames differ per socket: aiohttp builds and sends those.
        self._raw = not ws.compress
        self.hold = hold
        self.max_held = max_held
        self.held_bytes = 0
        self._held: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def accepts(self) -> bool:
        """Whether frames may be written here (uncompressed and open); if not, aiohttp sends."""
        t = self.transport
        return self._raw and t is not None and not t.is_closing() and not self.ws.closed

    def write(self, frame: bytes, at_once: bool) -> None:
        """Queue one whole frame; the caller checked `accepts()`."""
        if at_once or self.hold <= 0:
            if self.held_bytes:
                self._held.append(frame)
                self.flush()
            else:
                self.transport.write(frame)  # type: ignore[union-attr]
            return
        self._held.append(frame)
        self.held_bytes += len(frame)
        if self.held_bytes >= self.max_held:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.hold, self.flush)

    def flush(self) -> None:
        """Write the held frames in one call (dropped if the socket closed meanwhile)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held, self.held_bytes = self._held, [], 0
        if held and self.accepts():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))  # type: ignore[union-attr]

    def backlog(self) -> int:
        t = self.transport
        return (t.get_write_buffer_size() if t is not None else 0) + self.held_bytes


class WsSubscriber:
    """One session joined on one WebSocket.

    Without compression a frame is the same bytes for every socket: the room's first subscriber
    builds it, the rest write it as is (no per-socket encoding). Slow consumers are the bus's job
    (`backlog()`), so no drain is needed. `send_now` and `backlog` run once per event per socket.
    """

    def __init__(self, ws: web.WebSocketResponse, outbox: WsOutbox, is_panel: bool) -> None:
        self.ws = ws
        self.outbox = outbox
        self.is_panel = is_panel

    async def send(self, item: Published) -> None:
        if not self.send_now(item):
            await self.ws.send_str(item.text)  # compressed, or closing: aiohttp decides (and raises)

    def send_now(self, item: Published) -> bool:
        outbox = self.outbox
        if not outbox.accepts():
            return False
        frame = item.frame
        if frame is None:
            frame = item.frame = ws_text_frame(item.text)
        outbox.write(frame, item.type in SENT_AT_ONCE)
        return True

    def backlog(self) -> int:
        return self.outbox.backlog()

    async def drop(self, reason: str) -> None:
        self.outbox.flush()  # what it was sent comes before the close frame
        await self.ws.close(code=1013, message=f"dropped: {reason}; rejoin with after_seq".encode()[:120])


class WsConnection:
    """Parses commands, calls the core, answers each with `ack` or `error` carrying its id.

    A send is answered once its message is committed, which takes a while on a loaded server:
    the frames behind it are read as soon as its runs have started (so an abort finds them), and
    its answer follows from a task of its own. Nothing else behind a send waits for the disk.
    """

    def __init__(self, svc: OpencodeService, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.svc = svc
        self.ws = ws
        self.request = request
        self.outbox = WsOutbox(ws, request.transport, hold=svc.config.ws_hold)
        self.joined: dict[str, WsSubscriber] = {}
        self.listing: WsSubscriber | None = None  # the list room's subscriber (`sessions.join`)
        self._answering: set[asyncio.Task[None]] = set()

    async def handle(self, text: str) -> None:
        """One command frame: answered before the next is read, or, for a send, once it has started."""
        command = await self._parse(text)
        if command is None:
            return
        if command.type == "send":
            await self._start_send(command)
        else:
            await self._answer(command, lambda: self.dispatch(command))

    async def _start_send(self, command: Any) -> None:
        """Start a send here, in this task (no task switch on the way to the model), and answer it
        from a task of its own once its message is committed."""
        body = p.SendBody(text=command.text, images=command.images, skills=command.skills, mode=command.mode,
                          client_id=command.client_id)
        try:
            sending = await self.svc.sessions.start_send(command.session_id, body)
        except Exception as exc:  # noqa: BLE001 - one bad command must not kill the socket
            await self._answer_failure(command.id, exc)
            return

        async def answer() -> dict[str, Any]:
            return (await sending.answer()).model_dump()

        answering = asyncio.get_running_loop().create_task(self._answer(command, answer))
        self._answering.add(answering)
        answering.add_done_callback(self._answering.discard)

    async def answered(self) -> None:
        """Until every send taken so far has been answered (or has failed to be: the socket closed)."""
        if self._answering:
            await asyncio.wait(set(self._answering))

    async def _parse(self, text: str) -> Any:
        """The frame's command, or None once the frame has been answered with an error."""
        cid: str | None = None
        try:
            if len(text.encode("utf-8", "surrogatepass")) > p.MAX_WS_FRAME_BYTES:
                raise PayloadTooLarge(f"frames are limited to {p.MAX_WS_FRAME_BYTES} bytes", code="frame_too_large")
            raw = parse_json(text, "frame")
            if isinstance(raw, dict) and isinstance(raw.get("id"), str) and p.re_command_id(raw["id"]):
                cid = raw["id"]
            if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or raw["type"] not in p.COMMAND_TYPES:
                kind = raw.get("type") if isinstance(raw, dict) else None
                raise BadRequest(f"unknown command {str(kind)[:40]!r}; commands: {', '.join(sorted(p.COMMAND_TYPES))}",
                                 code="unknown_command")
            return parse_model(p.CommandAdapterModel, {"command": raw}).command
        except OpencodeError as exc:
            await self._answer_error(cid, exc)
        return None

    async def _answer(self, command: Any, run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Answer `command` with `run()`'s data, or with its error."""
        try:
            data = await run()
            await self.reply(p.AckReply(id=command.id, data=data).model_dump_json())
        except Exception as exc:  # noqa: BLE001 - one bad command must not kill the socket
            await self._answer_failure(command.id, exc)

    async def _answer_failure(self, cid: str | None, exc: Exception) -> None:
        if isinstance(exc, ConnectionResetError):  # the socket is gone: nobody to answer
            return
        if not isinstance(exc, OpencodeError):
            log.error("websocket command failed", exc_info=exc)
            exc = OpencodeError("unexpected server error; see the ComfyUI console")
        await self._answer_error(cid, exc)

    async def _answer_error(self, cid: str | None, exc: OpencodeError) -> None:
        try:
            await self.reply_error(cid, exc)
        except ConnectionResetError:
            pass

    async def reply_error(self, cid: str | None, exc: OpencodeError) -> None:
        if self.ws.closed:
            return
        body = p.ErrorReply(id=cid, error=p.ErrorBody(code=exc.code, message=self.svc.redact(exc.message),
                                                        details=exc.details))
        await self.reply(body.model_dump_json())

    async def reply(self, text: str) -> None:
        """An answer to a command, written at once: a client waiting on it (a script's ping, a
        panel's send) must not wait out the hold. The frames its command caused were published
        before it, so they leave with it, in order, in the same write."""
        if self.outbox.accepts():
            self.outbox.write(ws_text_frame(text), True)
        else:
            await self.ws.send_str(text)

    async def dispatch(self, cmd: Any) -> dict[str, Any]:
        """Run one command other than `send` (see `_start_send`)."""
        sessions = self.svc.sessions
        if cmd.type == "ping":
            return {"pong": True}
        if cmd.type == "join":
            await sessions.get(cmd.session_id)
            old = self.joined.pop(cmd.session_id, None)
            if old is not None:
                self.svc.bus.unsubscribe(cmd.session_id, old)
            sub = WsSubscriber(self.ws, self.outbox, cmd.panel)
            self.joined[cmd.session_id] = sub
            await self.svc.bus.subscribe(cmd.session_id, sub, cmd.after_seq)
            return {"session_id": cmd.session_id}
        if cmd.type == "sessions.join":
            return await self._join_sessions(cmd.after_seq)
        if cmd.type == "sessions.leave":
            self._leave_sessions()
            return {}
        if cmd.type == "leave":
            for sid in [cmd.session_id] if cmd.session_id else list(self.joined):
                sub = self.joined.pop(sid, None)
                if sub is not None:
                    self.svc.bus.unsubscribe(sid, sub)
            return {}
        if cmd.type == "abort":
            return (await sessions.abort(cmd.session_id, cmd.run_id, cmd.skill)).model_dump()
        if cmd.type == "retry":
            return (await sessions.retry(cmd.session_id, cmd.message_id)).model_dump()
        if cmd.type == "configure":
            return {"session": (await sessions.patch(cmd.session_id, cmd.patch)).model_dump(mode="json")}
        if cmd.type == "permission.reply":
            await sessions.get(cmd.session_id)
            self.svc.gate.reply(cmd.session_id, cmd.request_id, cmd.decision, cmd.remember)
            return {}
        if cmd.type == "ui.reply":
            self.svc.ui.reply(cmd.session_id, cmd.request_id, cmd.ok, cmd.result, cmd.error, answer_id=cmd.answer_id)
            return {}
        raise BadRequest(f"unknown command {cmd.type}", code="unknown_command")

    async def _join_sessions(self, after_seq: int | None) -> dict[str, Any]:
        """Follow the list room (again: a rejoin replaces the socket's earlier subscription).
        Kept apart from `joined`: a `leave` of every session leaves the list be."""
        self._leave_sessions()
        self.listing = WsSubscriber(self.ws, self.outbox, False)
        await self.svc.bus.subscribe(p.SESSIONS_ROOM, self.listing, after_seq)
        return {"session_id": p.SESSIONS_ROOM}

    def _leave_sessions(self) -> None:
        if self.listing is not None:
            self.svc.bus.unsubscribe(p.SESSIONS_ROOM, self.listing)
            self.listing = None

    def leave_all(self) -> None:
        for sid, sub in self.joined.items():
            self.svc.bus.unsubscribe(sid, sub)
        self.joined.clear()
        self._leave_sessions()
        self.outbox.flush()
