"""The Opencode server worker: the real app (`create_app`, service on a SQLite file) on loopback,
started as `opencode-agent serve` starts it (the objects alive after start-up frozen out of the
garbage collector's reach).

Used by the fan-out and relay benchmarks. Besides serving `/opencode/*` like the product, it
answers the parent's commands over its pipe: publish a burst of deltas into a room, report the
process's CPU time, and run the 1 ms loop-lag ticker on the server's own loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .common import ServerWindow, serve_commands, serve_on_loopback

TOKEN = "bench-token"


def delta_text(tag: str, i: int, size: int) -> str:
    t = f"{tag} token {i:07d} "
    return (t + "x" * size)[:max(size, len(t))]


async def sample_store_backlog(svc: Any, out: list[int]) -> None:
    """Rows queued in the store and not yet committed, every 50 ms (a diagnostic: it reads a
    private counter of `SqliteStore`, and reads nothing if that ever goes away)."""
    while True:
        out.append(int(getattr(svc.store, "_queued_rows", 0)))
        await asyncio.sleep(0.05)


def opencode_server(conn: Connection, data_dir: str, fanout_session: bool = False) -> None:
    state: dict[str, Any] = {}

    async def setup() -> dict[str, Any]:
        from .common import load_opencode

        load_opencode()
        from opencode_agent.cli import freeze_startup_objects
        from opencode_agent.core.config import Config
        from opencode_agent.core.protocol import SessionCreate
        from opencode_agent.core.trust import TrustPolicy
        from opencode_agent.routes import SERVICE, create_app

        app = create_app(Config(data_dir=Path(data_dir)), trust=TrustPolicy(token=TOKEN))
        app.on_startup.append(freeze_startup_objects)  # as `opencode-agent serve` starts it
        runner = await serve_on_loopback(app)
        svc = app[SERVICE]
        state.update(runner=runner, svc=svc)
        info: dict[str, Any] = {"port": runner.addresses[0][1], "pid": os.getpid()}
        if fanout_session:
            session = await svc.sessions.create(SessionCreate(title="fan-out", skills=["echo"]))
            state["sid"] = info["session_id"] = session.id
        return info

    async def handle(cmd: tuple[Any, ...]) -> Any:
        from opencode_agent.core.protocol import MessageDeltaData

        svc = state["svc"]
        if cmd[0] == "subscribers":
            return svc.bus.subscriber_count(cmd[1])
        if cmd[0] == "publish":
            _, sid, n, size, tag = cmd
            bus = svc.bus
            c0 = time.process_time()
            t0 = time.monotonic()
            for i in range(n):
                bus.publish(sid, "message.delta", MessageDeltaData(
                    message_id="msg_bench", run_id="run_bench", skill="echo", text=delta_text(tag, i, size)))
                await asyncio.sleep(0)
            return {"t0": t0, "c0": c0, "t_published": time.monotonic()}
        if cmd[0] == "cpu":
            await svc.store.flush()  # persisting the events is part of publishing them
            return {"cpu": time.process_time(), "dropped": svc.bus.dropped}
        if cmd[0] == "lag_start":
            state["window"] = ServerWindow()
            state["backlog"] = []
            state["sampler"] = asyncio.get_running_loop().create_task(sample_store_backlog(svc, state["backlog"]))
            return None
        if cmd[0] == "lag_stop":
            state["sampler"].cancel()
            summary = await state["window"].stop()
            summary["store_backlog_max"] = max(state["backlog"], default=0)
            return summary
        raise ValueError(cmd[0])

    async def teardown() -> None:
        if "runner" in state:
            await state["runner"].cleanup()

    serve_commands(conn, setup, handle, teardown)
