"""`FakeToolContext`: the narrow view of a run a tool gets, recording what the tool did with it.

`ui_replies` scripts the panel: per action, a reply dict, an exception to raise, or a callable
taking the payload. An action with no script behaves like a session with no panel connected.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from opencode_agent.core.tools import ToolError

UiReply = Union[dict[str, Any], Exception, Callable[[dict[str, Any]], Any]]

NO_PANEL = "no Opencode panel is connected to this session; open the panel in ComfyUI and try again"


@dataclass
class FakeToolContext:
    session_id: str = "ses_test"
    run_id: str = "run_test"
    skill: str = "assistant"
    run_skills: tuple[str, ...] = ("assistant",)
    ui_replies: dict[str, UiReply] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    ui_requests: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    on_status: Callable[[str], None] | None = None  # e.g. to resolve a future when a tool reports progress

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    async def ui_request(self, action: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.ui_requests.append((action, payload, timeout))
        reply = self.ui_replies.get(action)
        if reply is None:
            raise ToolError(NO_PANEL)
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            result = reply(payload)
            return await result if inspect.isawaitable(result) else result
        return reply

    async def emit_status(self, message: str) -> None:
        self.statuses.append(message)
        if self.on_status is not None:
            self.on_status(message)
