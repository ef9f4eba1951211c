"""`HttpComfyAdapter`: a ComfyUI reached over HTTP (`/object_info`, `/prompt`, `/history`, `/ws`, ...).

Used by the standalone server and the CLI. It keeps one WebSocket open under its own client id
(ComfyUI sends a run's progress only to the client id that queued it) and routes the frames to
the runs being followed through the shared `EventHub`. The aiohttp session is the service's;
this adapter never closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp

from .adapter import (
    ComfyAdapter,
    ComfyError,
    ComfyEvent,
    ComfyUnavailable,
    ComfyValidationError,
    MAX_VIEW_BYTES,
    check_image_ref,
    queue_ids,
    validation_errors,
)

log = logging.getLogger("opencode.comfyui.http")


def _segment(value: str) -> str:
    """A model's argument as one path segment: `../view?…` must not reach another route (and
    `.`, `..` or nothing would be resolved away by the URL, so they are no segment at all)."""
    if value in ("", ".", ".."):
        raise ComfyError(f"{value!r} is not a name ComfyUI knows")
    return quote(value, safe="")


class HttpComfyAdapter(ComfyAdapter):
    def __init__(
        self,
        base_url: str,
        http: aiohttp.ClientSession,
        *,
        client_id: str | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.client_id = client_id or f"opencode-{uuid.uuid4().hex}"
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self._listener: asyncio.Task[None] | None = None
        self._greeted: asyncio.Future[None] | None = None

    # ---- plain requests

    async def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> tuple[int, bytes]:
        url = self.base_url + path
        try:
            async with self.http.request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout or self.request_timeout), **kwargs
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_VIEW_BYTES:
                        raise ComfyError(f"ComfyUI's answer to {path} is larger than {MAX_VIEW_BYTES} bytes")
                    chunks.append(chunk)
                return resp.status, b"".join(chunks)
        except asyncio.TimeoutError:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {path} in time") from None
        except aiohttp.ClientError as exc:
            raise ComfyUnavailable(f"cannot reach ComfyUI at {self.base_url} ({exc}); is it running?") from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self._request(method, path, **kwargs)
        if status >= 400:
            raise ComfyError(f"ComfyUI answered {path} with HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
        try:
            return json.loads(body)
        except ValueError:
            raise ComfyError(f"ComfyUI's answer to {path} is not JSON") from None

    # ---- interface

    async def _load_object_info(self) -> dict[str, Any]:
        info = await self._json("GET", "/object_info", timeout=max(self.request_timeout, 120.0))
        if not isinstance(info, dict):
            raise ComfyError("ComfyUI's /object_info is not an object")
        return info

    async def queue(self, graph: dict[str, Any], client_id: str | None = None) -> str:
        await self._start_listening()  # before queueing, so the run's first events reach us
        status, body = await self._request("POST", "/prompt", json={"prompt": graph, "client_id": client_id or self.client_id})
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("prompt_id"), str):
            return answer["prompt_id"]
        if isinstance(answer, dict) and ("node_errors" in answer or "error" in answer):
            raise ComfyValidationError(validation_errors(answer.get("error"), answer.get("node_errors")))
        raise ComfyError(f"ComfyUI answered /prompt with HTTP {status}: {body[:300].decode('utf-8', 'replace')}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        answer = await self._json("GET", f"/history/{_segment(prompt_id)}")
        entry = answer.get(prompt_id) if isinstance(answer, dict) else None
        return entry if isinstance(entry, dict) else None

    async def recent_history(self, max_items: int) -> dict[str, dict[str, Any]]:
        answer = await self._json("GET", "/history", params={"max_items": str(max_items)})
        return {str(k): v for k, v in answer.items() if isinstance(v, dict)} if isinstance(answer, dict) else {}

    async def queue_state(self) -> dict[str, list[str]]:
        answer = await self._json("GET", "/queue")
        return {"running": queue_ids(answer.get("queue_running")), "pending": queue_ids(answer.get("queue_pending"))}

    async def cancel(self, prompt_id: str) -> bool:
        state = await self.queue_state()
        if prompt_id in state["pending"]:
            status, _ = await self._request("POST", "/queue", json={"delete": [prompt_id]})
        elif prompt_id in state["running"]:
            # With a prompt id, ComfyUI interrupts only if that prompt is still the one running.
            status, _ = await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        else:
            return False
        return status < 400

    async def folders(self) -> list[str]:
        answer = await self._json("GET", "/models")
        return [str(f) for f in answer] if isinstance(answer, list) else []

    async def models(self, folder: str) -> list[str]:
        status, body = await self._request("GET", f"/models/{_segment(folder)}")
        if status == 404:
            raise ComfyError(f"unknown model folder '{folder}'; ComfyUI's folders are: {', '.join(await self.folders())}")
        if status >= 400:
            raise ComfyError(f"ComfyUI answered /models/{folder} with HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError:  # UnicodeDecodeError too
            raise ComfyError(f"ComfyUI's answer to /models/{folder} is not JSON") from None
        return [str(f) for f in answer] if isinstance(answer, list) else []

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        filename, subfolder = check_image_ref(filename, subfolder, type)
        status, body = await self._request("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        if status == 404:
            where = f"{type}/{subfolder + '/' if subfolder else ''}{filename}"
            raise ComfyError(f"ComfyUI has no file {where}")
        if status >= 400:
            raise ComfyError(f"ComfyUI answered /view with HTTP {status}")
        return body

    # ---- progress over /ws

    async def _start_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._greeted = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._listen(self._greeted), name="opencode-comfyui-ws")
        if self._greeted is not None and not self._greeted.done():
            # ComfyUI greets a new socket with a `status` frame once it is registered.
            try:
                await asyncio.wait_for(asyncio.shield(self._greeted), self.connect_timeout)
            except asyncio.TimeoutError:
                log.warning("ComfyUI's /ws did not greet within %.0f s; following runs by polling", self.connect_timeout)

    async def _listen(self, greeted: asyncio.Future[None]) -> None:
        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        try:
            async with self.http.ws_connect(url, params={"clientId": self.client_id}, heartbeat=30.0) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary frames are preview images
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        continue
                    if not isinstance(frame, dict) or not isinstance(frame.get("data"), dict):
                        continue
                    if not greeted.done():
                        greeted.set_result(None)
                    self._hub.publish(ComfyEvent(str(frame.get("type")), frame["data"]))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("ComfyUI event stream at %s unavailable: %s", url, exc)
        finally:
            if not greeted.done():
                greeted.set_result(None)

    async def close(self) -> None:
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        self._listener = None
