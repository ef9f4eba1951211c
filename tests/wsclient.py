"""A small test-side WebSocket client: send commands with ids, wait for acks and events."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Callable

from aiohttp import ClientWebSocketResponse, WSMsgType

_ids = itertools.count(1)


class WsClient:
    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}

    async def command(self, type_: str, **fields: Any) -> dict[str, Any]:
        return await self.reply(await self.post(type_, **fields))

    async def post(self, type_: str, **fields: Any) -> str:
        """Send a command without waiting for its answer; its id, for `reply`."""
        cid = f"c{next(_ids)}"
        await self.ws.send_str(json.dumps({"id": cid, "type": type_, **fields}))
        return cid

    async def reply(self, cid: str, timeout: float = 10) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while cid not in self.replies:
                await self._read_one()
            return self.replies.pop(cid)

        return await asyncio.wait_for(wait(), timeout)

    async def raw(self, data: str | bytes) -> dict[str, Any]:
        """Send a raw frame and return the next reply (ack or error)."""
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)
        async def wait() -> dict[str, Any]:
            while not self.replies:
                await self._read_one()
            key = next(iter(self.replies))
            return self.replies.pop(key)
        return await asyncio.wait_for(wait(), 10)

    async def _read_one(self) -> None:
        msg = await self.ws.receive()
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type} {msg.data!r} {msg.extra!r}")
        data = json.loads(msg.data)
        if data.get("type") in ("ack", "error") and "seq" not in data:
            self.replies[data.get("id") or f"anon{len(self.replies)}"] = data
        else:
            self.events.append(data)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """Read until an event matching `predicate` arrives (it may already have)."""
        async def wait() -> dict[str, Any]:
            checked = 0
            while True:
                for ev in self.events[checked:]:
                    if predicate(ev):
                        return ev
                checked = len(self.events)
                await self._read_one()
        return await asyncio.wait_for(wait(), timeout)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


def run_final(run_id: str) -> Callable[[dict[str, Any]], bool]:
    def pred(ev: dict[str, Any]) -> bool:
        return (ev["type"] == "run.status" and ev["data"]["run"]["id"] == run_id
                and ev["data"]["run"]["status"] in ("completed", "aborted", "error", "interrupted"))
    return pred
