"""Asking the panel: the server sends `ui.request`, a connected panel answers with `ui.reply`.

Some tools need the browser (reading the graph open in the canvas, loading a proposed graph).
The broker refuses at once when no panel is joined to the session, and gives up after a timeout,
so a tool never hangs on a closed tab. Imports protocol, bus, tools and errors.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .bus import Bus
from .errors import NotFound
from .protocol import UiRequestData, new_id
from .tools import ToolError


ANSWERS_REMEMBERED = 256


@dataclass
class _Waiting:
    session_id: str
    future: asyncio.Future[dict[str, Any]]


class UiBroker:
    def __init__(self, bus: Bus, *, default_timeout: float = 30.0) -> None:
        self.bus = bus
        self.default_timeout = default_timeout
        self._waiting: dict[str, _Waiting] = {}
        # The last answers taken, by the panel's name for them, so that a panel whose connection
        # dropped before the ack can send its answer again and hear that it was taken (an accepted
        # workflow is then loaded); another panel's answer is not that one.
        self._answered: OrderedDict[str, str] = OrderedDict()

    async def request(self, session_id: str, run_id: str | None, action: str, payload: dict[str, Any],
                      timeout: float | None = None) -> dict[str, Any]:
        if not self.bus.has_panel(session_id):
            raise ToolError(
                "No Opencode panel is open on this session, so the canvas cannot be reached. "
                "Open the Opencode node or sidebar in ComfyUI and ask again."
            )
        request_id = new_id("ui")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = _Waiting(session_id, future)
        self.bus.publish(session_id, "ui.request", UiRequestData(
            request_id=request_id, run_id=run_id, action=action, payload=payload))  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(future, timeout or self.default_timeout)
        except asyncio.TimeoutError:
            raise ToolError(f"the panel did not answer {action} in time; is the ComfyUI tab still open?") from None
        finally:
            self._waiting.pop(request_id, None)

    def reply(self, session_id: str, request_id: str, ok: bool, result: dict[str, Any], error: str | None,
              *, answer_id: str | None = None) -> None:
        """Answer an open request. An answer repeated under its `answer_id` (a panel sending it
        again after a dropped connection) is taken as already given; any other answer to a
        closed request, another panel's included, is NotFound."""
        if answer_id is not None and self._answered.get(request_id) == f"{session_id}/{answer_id}":
            return
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.session_id != session_id or waiting.future.done():
            raise NotFound(f"no open UI request {request_id} in this session; it may have timed out")
        if answer_id is not None:
            self._answered[request_id] = f"{session_id}/{answer_id}"
            while len(self._answered) > ANSWERS_REMEMBERED:
                self._answered.popitem(last=False)
        if ok:
            waiting.future.set_result(result)
        else:
            waiting.future.set_exception(ToolError(f"the panel could not do it: {error or 'unknown reason'}"))
