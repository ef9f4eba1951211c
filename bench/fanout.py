"""Benchmark 1: one session room fanned out to many WebSocket clients.

Two servers run side by side, each in its own process: Opencode (`create_app`, a real service on
a SQLite file, clients joined with the `join` command) and a bare aiohttp server whose broadcast
is `for ws in clients: await ws.send_str(s)`. One client process holds both groups of sockets.
A round publishes `events` deltas into the room (Opencode: `bus.publish`, which also persists
them; baseline: one `json.dumps` of the same envelope per event, then the loop), yielding to
the loop after each event, and ends when every client has received every event. Rounds
alternate baseline / Opencode so drift hits both alike; the first round of each is a warm-up.

Figures: deliveries/s = clients × events / (last delivery − publish start), on the shared
CLOCK_MONOTONIC; server CPU per delivery = the server process's CPU time over the round
(`time.process_time`, all threads, including Opencode's store writer flushing the events)
divided by the deliveries.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from .common import Row, Worker, median, serve_commands, serve_on_loopback
from .opencode_server import delta_text, opencode_server

# --------------------------------------------------------------------------- baseline server


def baseline_server(conn: Connection) -> None:
    state: dict[str, Any] = {"clients": []}

    async def setup() -> dict[str, Any]:
        from aiohttp import WSMsgType, web

        clients: list[web.WebSocketResponse] = state["clients"]

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(compress=False)
            await ws.prepare(request)
            clients.append(ws)
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.ERROR:
                        break
            finally:
                clients.remove(ws)
            return ws

        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        runner = await serve_on_loopback(app)
        state["runner"] = runner
        return {"port": runner.addresses[0][1], "pid": os.getpid()}

    async def handle(cmd: tuple[Any, ...]) -> Any:
        clients = state["clients"]
        if cmd[0] == "subscribers":
            return len(clients)
        if cmd[0] == "publish":
            _, n, size, tag = cmd
            c0 = time.process_time()
            t0 = time.monotonic()
            seq0 = state.get("seq", 0)
            for i in range(n):
                # The same envelope Opencode sends, serialised once per event.
                s = json.dumps({"seq": seq0 + i + 1, "session_id": "ses_bench", "type": "message.delta",
                                "ts": time.time(), "data": {"message_id": "msg_bench", "run_id": "run_bench",
                                                            "skill": "echo", "text": delta_text(tag, i, size)}},
                               ensure_ascii=False, separators=(",", ":"))
                for ws in clients:
                    await ws.send_str(s)
                await asyncio.sleep(0)
            state["seq"] = seq0 + n
            return {"t0": t0, "c0": c0, "t_published": time.monotonic()}
        if cmd[0] == "cpu":
            return {"cpu": time.process_time(), "dropped": 0}
        raise ValueError(cmd[0])

    async def teardown() -> None:
        if "runner" in state:
            await state["runner"].cleanup()

    serve_commands(conn, setup, handle, teardown)


# --------------------------------------------------------------------------- clients


class _Group:
    """One server's sockets and what they received in the current round."""

    def __init__(self, size: int) -> None:
        self.sockets: list[Any] = []
        self.counts = [0] * size
        self.tag: bytes | None = None
        self.total = 0
        self.expected_total = 0
        self.t_end = 0.0
        self.done = asyncio.Event()

    def receiver(self, idx: int) -> Any:
        counts = self.counts

        def on_text(payload: bytes) -> None:
            tag = self.tag
            if tag is not None and tag in payload:
                counts[idx] += 1
                self.total += 1
                if self.total == self.expected_total:
                    self.t_end = time.monotonic()
                    self.done.set()

        return on_text


def client_process(conn: Connection) -> None:
    """Both groups of sockets, on the lightweight `MiniWs` client so the servers are the bottleneck."""
    state: dict[str, Any] = {"groups": {}}

    async def setup() -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def connect(name: str, port: int, path: str, count: int, session_id: str | None) -> dict[str, Any]:
        from .miniws import connect as ws_connect

        group = state["groups"][name] = _Group(count)
        t0 = time.monotonic()
        for idx in range(count):
            replies: list[dict[str, Any]] = []
            joined = asyncio.Event()

            def on_join_reply(payload: bytes, replies: list[dict[str, Any]] = replies,
                              joined: asyncio.Event = joined) -> None:
                replies.append(json.loads(payload))
                kinds = {r.get("type") for r in replies}
                if "error" in kinds or {"ack", "session.state"} <= kinds:
                    joined.set()

            receive = group.receiver(idx)
            ws = await ws_connect("127.0.0.1", port, path, on_join_reply if session_id else receive)
            if session_id is not None:
                ws.send_text(json.dumps({"id": f"j{idx}", "type": "join", "session_id": session_id}))
                await asyncio.wait_for(joined.wait(), 10)
                if any(r.get("type") == "error" for r in replies):
                    raise RuntimeError(f"join failed: {replies}")
                ws.on_text = receive
            group.sockets.append(ws)
        return {"seconds": time.monotonic() - t0}

    async def handle(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "connect":
            return await connect(*cmd[1:])
        if cmd[0] == "expect":
            _, name, n, tag = cmd
            group = state["groups"][name]
            group.counts[:] = [0] * len(group.counts)
            group.total = 0
            group.expected_total = n * len(group.sockets)
            group.done = asyncio.Event()
            group.tag = tag.encode()
            state["c0"] = time.process_time()
            return None
        if cmd[0] == "wait":
            _, name, timeout = cmd
            group = state["groups"][name]
            closed = sum(1 for ws in group.sockets if ws.closed.done())
            try:
                await asyncio.wait_for(group.done.wait(), timeout)
            except asyncio.TimeoutError:
                return {"ok": False, "received": group.total, "expected": group.expected_total, "closed": closed}
            return {"ok": True, "t_end": group.t_end, "cpu": time.process_time() - state["c0"],
                    "min": min(group.counts), "max": max(group.counts), "closed": closed}
        raise ValueError(cmd[0])

    async def teardown() -> None:
        for group in state["groups"].values():
            for ws in group.sockets:
                ws.close()

    serve_commands(conn, setup, handle, teardown)


# --------------------------------------------------------------------------- orchestration


def run(quick: bool, repeat: int, log: Any = print) -> list[Row]:
    clients = 100 if quick else 500
    events = 200 if quick else 1000
    size = 40
    round_timeout = 120.0
    workers: list[Worker] = []
    tmp = tempfile.TemporaryDirectory(prefix="opencode-bench-fanout-")
    try:
        oc = Worker("opencode-server", opencode_server, data_dir=tmp.name, fanout_session=True)
        workers.append(oc)
        base = Worker("baseline-server", baseline_server)
        workers.append(base)
        cl = Worker("fanout-clients", client_process)
        workers.append(cl)
        oc_info = oc.wait_ready(60)
        base_info = base.wait_ready(60)
        cl.wait_ready(60)
        cl.call("connect", "baseline", base_info["port"], "/ws", clients, None, timeout=300)
        cl.call("connect", "opencode", oc_info["port"], "/opencode/ws", clients, oc_info["session_id"], timeout=300)
        if base.call("subscribers") != clients or oc.call("subscribers", oc_info["session_id"]) != clients:
            raise RuntimeError("not every client joined")
        log(f"  fan-out: {clients} clients on each server, {events} events per round "
            f"(pids: opencode {oc_info['pid']}, baseline {base_info['pid']})")

        results: dict[str, list[dict[str, float]]] = {"baseline": [], "opencode": []}
        rounds = 3 * repeat  # rounds are short; more of them make the medians steadier
        for r in range(rounds + 1):  # round 0 warms both up and is discarded
            for name, server in (("baseline", base), ("opencode", oc)):
                tag = f"~{name[0]}{r}~"
                cl.call("expect", name, events, tag)
                if name == "opencode":
                    server.send("publish", oc_info["session_id"], events, size, tag)
                else:
                    server.send("publish", events, size, tag)
                got = cl.call("wait", name, round_timeout, timeout=round_timeout + 10)
                pub = server.recv(30, "publish")
                if not got["ok"]:
                    raise RuntimeError(f"{name}: clients received {got['received']} of {got['expected']} "
                                       f"deliveries ({got['closed']} sockets closed)")
                cpu = server.call("cpu")
                deliveries = events * clients
                elapsed = got["t_end"] - pub["t0"]
                res = {"rate": deliveries / elapsed, "cpu_us": (cpu["cpu"] - pub["c0"]) / deliveries * 1e6,
                       "client_cpu_share": got["cpu"] / elapsed, "dropped": cpu["dropped"]}
                if r > 0:
                    results[name].append(res)
                log(f"    round {r} {name:8s}: {res['rate']:>9,.0f} deliveries/s, "
                    f"{res['cpu_us']:.2f} µs server CPU/delivery, client process busy {res['client_cpu_share']:.0%}"
                    + (" (warm-up)" if r == 0 else ""))
    finally:
        for w in workers:
            w.close()
        tmp.cleanup()

    b, o = results["baseline"], results["opencode"]
    rate_b, rate_o = median([x["rate"] for x in b]), median([x["rate"] for x in o])
    cpu_b, cpu_o = median([x["cpu_us"] for x in b]), median([x["cpu_us"] for x in o])
    rate_ratio = median([x["rate"] / y["rate"] for x, y in zip(o, b)])
    cpu_ratio = median([x["cpu_us"] / y["cpu_us"] for x, y in zip(o, b)])
    label = f"{clients} WS clients"
    return [
        Row("1 fan-out", f"deliveries/s, {label}", "/s", rate_o, rate_b, "≥ 0.80× baseline",
            rate_ratio >= 0.8, [x["rate"] for x in o], [x["rate"] for x in b],
            note=f"{len(o)} round pairs, ratio = median of per-pair ratios; client process busy "
                 f"{median([x['client_cpu_share'] for x in o]):.0%} / {median([x['client_cpu_share'] for x in b]):.0%}",
            paired_ratio=rate_ratio),
        Row("1 fan-out", f"server CPU per delivery, {label}", "µs", cpu_o, cpu_b, "≤ 1.25× baseline",
            cpu_ratio <= 1.25, [x["cpu_us"] for x in o], [x["cpu_us"] for x in b],
            note="ratio = median of per-pair ratios", paired_ratio=cpu_ratio),
    ]
