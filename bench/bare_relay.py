"""A bare aiohttp relay: about the least a server can do to relay a model's reply over a WebSocket.

The reference for the relay benchmark's server-side figures (loop lag, CPU per reply): the same
processes, client and upstream as Opencode's pass, with a server that does only the relay. It
speaks just enough of Opencode's protocol for `relay.py`'s client (create a provider and a
session, `join`, `send`, `message.delta`, `run.status`). For each `send` it POSTs to the upstream
with one shared `ClientSession`, splits each network read into SSE events, decodes each chunk and
writes one `message.delta` envelope per token straight to the socket as a WebSocket frame (as
Opencode's own sockets do). No storage, history, event log, replay, logging or read timeout:
what is left is aiohttp, JSON and the socket writes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import struct
import time
from multiprocessing.connection import Connection
from typing import Any, Awaitable, Callable

from .common import ServerWindow, serve_commands, serve_on_loopback

BODY = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "hello"}]}


def text_frame(text: str) -> bytes:
    """One final, unmasked RFC 6455 text frame."""
    data = text.encode()
    n = len(data)
    head = bytes((0x81, n)) if n < 126 else struct.pack("!BBH", 0x81, 126, n) if n < 1 << 16 else \
        struct.pack("!BBQ", 0x81, 127, n)
    return head + data


Reply = Callable[[Any, str, str], Awaitable[None]]  # (the socket's transport, session id, run id)


def envelope_maker() -> Callable[[str, str, str], str]:
    """Opencode's event envelope text, with a sequence number per session."""
    seqs: dict[str, int] = {}

    def envelope(sid: str, type_: str, data_json: str) -> str:
        seqs[sid] = seq = seqs.get(sid, 0) + 1
        return f'{{"seq":{seq},"session_id":"{sid}","type":"{type_}","ts":{time.time()!r},"data":{data_json}}}'
    return envelope


def status_frame(envelope: Callable[[str, str, str], str], sid: str, run_id: str, status: str) -> bytes:
    return text_frame(envelope(sid, "run.status", json.dumps({"run": {"id": run_id, "status": status}})))


def serve_relay(conn: Connection, make_reply: Callable[[dict[str, Any]], Awaitable[Reply]]) -> None:
    """The command side every reference relay shares: aiohttp for the WebSocket and the few
    routes `relay.py`'s client calls; each `send` starts `reply` in a task. `make_reply(state)`
    builds the reply function inside the running loop (`state["close"]`: callables for teardown)."""
    state: dict[str, Any] = {"close": []}
    ids = itertools.count(1)

    async def setup() -> dict[str, Any]:
        from aiohttp import web

        reply = await make_reply(state)

        async def websocket(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(compress=False)
            await ws.prepare(request)
            tasks: set[asyncio.Task[None]] = set()
            async for msg in ws:
                cmd = json.loads(msg.data)
                if cmd["type"] == "join":
                    await ws.send_str(json.dumps({"type": "ack", "id": cmd["id"], "data": {"session_id": cmd["session_id"]}}))
                elif cmd["type"] == "send":
                    run_id = f"run_{next(ids)}"
                    await ws.send_str(json.dumps({"type": "ack", "id": cmd["id"], "data": {"run_id": run_id}}))
                    task = asyncio.get_running_loop().create_task(reply(request.transport, cmd["session_id"], run_id))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            return ws

        async def created(request: web.Request) -> web.Response:
            return web.json_response({"id": f"ses_{next(ids)}", "name": "fake"}, status=201)

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/opencode/ws", websocket)
        app.router.add_post("/opencode/providers", created)
        app.router.add_put("/opencode/providers/{name}/key", ok)
        app.router.add_post("/opencode/sessions", created)
        app.router.add_patch("/opencode/sessions/{sid}", ok)
        runner = await serve_on_loopback(app)
        state["runner"] = runner
        return {"port": runner.addresses[0][1], "pid": os.getpid()}

    async def handle(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "lag_start":
            state["window"] = ServerWindow()
            return None
        if cmd[0] == "lag_stop":
            summary = await state["window"].stop()
            summary["store_backlog_max"] = 0
            return summary
        raise ValueError(cmd[0])

    async def teardown() -> None:
        if "runner" in state:
            await state["runner"].cleanup()
        for close in state["close"]:
            await close()

    serve_commands(conn, setup, handle, teardown)


def bare_relay_server(conn: Connection, up_port: int, spin_ms: float = 0.0) -> None:
    """`spin_ms`: CPU to burn for each reply, half as it starts and half as it ends (`knee.py`:
    a stand-in for a server's own work a reply, such as saving and announcing it)."""
    spin = spin_ms / 2000

    def burn() -> None:
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            pass

    async def make_reply(state: dict[str, Any]) -> Reply:
        import aiohttp

        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        state["close"].append(http.close)
        url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        headers = {"Authorization": "Bearer sk-bench-not-a-real-key", "Accept": "text/event-stream"}
        envelope = envelope_maker()
        encode_str = json.encoder.encode_basestring  # type: ignore[attr-defined]

        async def reply(transport: Any, sid: str, run_id: str) -> None:
            if spin:
                burn()
            head = f'{{"message_id":"msg_{run_id}","run_id":"{run_id}","skill":"assistant","text":'
            status = "error"
            async with http.post(url, json=BODY, headers=headers) as resp:
                pending = b""
                async for chunk in resp.content.iter_any():
                    *events, pending = (pending + chunk).split(b"\n\n")
                    for event in events:
                        payload = event[6:]  # after "data: "
                        if payload == b"[DONE]":
                            status = "completed"
                            break
                        choices = json.loads(payload)["choices"]
                        text = choices[0]["delta"].get("content") if choices else None
                        if text:
                            data = f"{head}{encode_str(text)}}}"
                            transport.write(text_frame(envelope(sid, "message.delta", data)))
            if spin:
                burn()
            transport.write(status_frame(envelope, sid, run_id, status))
        return reply

    serve_relay(conn, make_reply)
