"""A fake OpenAI-compatible upstream in its own process: Chat Completions over SSE, paced.

`POST /v1/chat/completions` answers with the headers at once, the first content token `ttft`
seconds after the request arrived, then one token every 1/`rate` seconds on an absolute
schedule (no drift), then the finish chunk, the usage chunk and `[DONE]` — the chunk shapes
OpenAI streams with `stream_options.include_usage`. Each token's text is the CLOCK_MONOTONIC
time at which it was written and the time the request arrived (`"<sent>|<index>|<arrived> "`), so
a client on this machine can compute every token's delivery latency, and how long its request
took to reach the upstream, whichever way it came.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from .common import serve_commands, serve_on_loopback


def _chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "m", "system_fingerprint": None, "choices": choices, "usage": usage}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def token_sent_at(text: str) -> float:
    """The upstream's send time carried by a token's text."""
    return float(text.split("|", 1)[0])


def request_arrived_at(text: str) -> float:
    """When the upstream received the request that produced this token."""
    return float(text.split("|")[2])


def upstream_server(conn: Connection, ttft: float, rate: float, tokens: int) -> None:
    state: dict[str, Any] = {"requests": 0, "late": [], "peers": set()}

    async def setup() -> dict[str, Any]:
        from aiohttp import web

        async def completions(request: web.Request) -> web.StreamResponse:
            t_req = time.monotonic()
            await request.read()
            state["requests"] += 1
            state["peers"].add(request.transport.get_extra_info("peername") if request.transport else None)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            await resp.write(_chunk([_choice({"role": "assistant", "content": ""})]))
            t_first = t_req + ttft
            clock = time.monotonic
            for i in range(tokens):
                wait = t_first + i / rate - clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = clock()
                if i == 0:
                    state["late"].append(now - t_first)
                await resp.write(_chunk([_choice({"content": f"{now:.6f}|{i}|{t_req:.6f} "})]))
            await resp.write(_chunk([_choice({}, "stop")]))
            await resp.write(_chunk([], {"prompt_tokens": 20, "completion_tokens": tokens,
                                         "total_tokens": 20 + tokens}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/v1/models", models)
        runner = await serve_on_loopback(app)
        state["runner"] = runner
        return {"port": runner.addresses[0][1], "pid": os.getpid()}

    async def handle(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "cpu":
            return time.process_time()
        if cmd[0] == "counts":
            # Requests and distinct client connections since the last call (keep-alive reuse).
            out = {"requests": state["requests"], "connections": len(state["peers"])}
            state["requests"], state["peers"] = 0, set()
            return out
        if cmd[0] == "stats":
            late = state["late"]
            state["late"] = []
            return {"requests": state["requests"], "late_first_ms": [x * 1000 for x in late]}
        raise ValueError(cmd[0])

    async def teardown() -> None:
        if "runner" in state:
            await state["runner"].cleanup()

    serve_commands(conn, setup, handle, teardown)
