"""Permission policy for tool calls: `allow`, `ask` or `deny`, per permission class and per tool.

Resolution order: the session's rule for the tool, the session's rule for the class, the global
rule for the tool, the global rule for the class, then the defaults (`read` allow, `edit` and
`run` ask, `network` and `files` deny). `ask` publishes `permission.requested` to the session's
clients and waits for an answer; a timeout or an abort counts as deny. Every decision goes to the
audit table and the session's log.
Imports protocol, bus, store and tools.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from .bus import Bus
from .errors import NotFound
from .protocol import (
    PermissionPolicy,
    PermissionRules,
    PermissionRequestedData,
    PermissionResolvedData,
    Session,
    new_id,
)
from .secrets import atomic_write_text
from .store import Store
from .tools import Tool

log = logging.getLogger("opencode.permissions")

DEFAULT_POLICY: dict[str, PermissionPolicy] = {
    "read": "allow",
    "edit": "ask",
    "run": "ask",
    "network": "deny",
    "files": "deny",
}

RememberFn = Callable[[str, str, PermissionPolicy], Awaitable[None]]


@dataclass
class _Pending:
    session_id: str
    run_id: str
    future: asyncio.Future[tuple[str, bool]]


def resolve_policy(session: Session, global_rules: dict[str, PermissionPolicy], tool: Tool) -> PermissionPolicy:
    for rules in (session.permissions, global_rules):
        if tool.name in rules:
            return rules[tool.name]
        if tool.permission in rules:
            return rules[tool.permission]
    return DEFAULT_POLICY[tool.permission]


def summarize(arguments: dict[str, Any], limit: int = 300) -> str:
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PermissionGate:
    def __init__(self, bus: Bus, store: Store, remember: RememberFn, *, timeout: float = 120.0) -> None:
        self.bus = bus
        self.store = store
        self.remember = remember
        self.timeout = timeout
        self.global_rules: dict[str, PermissionPolicy] = {}
        self._rules_path: Path | None = None
        self._pending: dict[str, _Pending] = {}

    async def check(self, session: Session, run_id: str, skill: str, tool: Tool, arguments: dict[str, Any]) -> tuple[bool, str]:
        """Whether the call may run, and why; waits for a person when the policy says `ask`."""
        policy = resolve_policy(session, self.global_rules, tool)
        if policy == "allow":
            return True, "allowed by policy"
        if policy == "deny":
            await self._audit(session.id, run_id, None, skill, tool, "deny", "denied by policy")
            return False, f"the {tool.permission} permission of {tool.name} is set to deny"
        return await self._ask(session, run_id, skill, tool, arguments)

    async def _ask(self, session: Session, run_id: str, skill: str, tool: Tool, arguments: dict[str, Any]) -> tuple[bool, str]:
        request_id = new_id("perm")
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(session.id, run_id, future)
        self.bus.publish(session.id, "permission.requested", PermissionRequestedData(
            request_id=request_id, run_id=run_id, skill=skill, tool=tool.name,
            permission_class=tool.permission, summary=summarize(arguments),
            arguments=arguments, expires_at=time.time() + self.timeout,
        ))
        reason = "answered"
        try:
            decision, remember = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            decision, remember, reason = "deny", False, "no answer before the timeout"
        except asyncio.CancelledError:
            self._resolve(request_id, session.id, "deny", False, "the run was aborted")
            await asyncio.shield(self._audit(session.id, run_id, request_id, skill, tool, "deny", "the run was aborted"))
            raise
        finally:
            self._pending.pop(request_id, None)
        if reason != "answered":
            self._resolve(request_id, session.id, decision, remember, reason)
        if remember:
            await self.remember(session.id, tool.name, "allow" if decision == "allow" else "deny")
        await self._audit(session.id, run_id, request_id, skill, tool, decision, reason + (" (remembered)" if remember else ""))
        if decision == "allow":
            return True, "allowed by the user"
        return False, "the user denied it" if reason == "answered" else f"denied: {reason}"

    def reply(self, session_id: str, request_id: str, decision: str, remember: bool) -> None:
        """A person's answer; unknown or already answered requests are a NotFound."""
        pending = self._pending.get(request_id)
        if pending is None or pending.session_id != session_id or pending.future.done():
            raise NotFound(f"no open permission request {request_id} in this session; it may have expired")
        pending.future.set_result((decision, remember))
        self._resolve(request_id, session_id, decision, remember, "answered")

    def _resolve(self, request_id: str, session_id: str, decision: str, remember: bool, reason: str) -> None:
        self.bus.publish(session_id, "permission.resolved", PermissionResolvedData(
            request_id=request_id, decision=decision, remember=remember, reason=reason))  # type: ignore[arg-type]

    async def _audit(self, session_id: str, run_id: str, request_id: str | None, skill: str, tool: Tool,
                     decision: str, reason: str) -> None:
        log.info("permission %s for %s (%s): %s", decision, tool.name, tool.permission, reason,
                 extra={"session_id": session_id, "run_id": run_id})
        await self.store.add_audit({
            "session_id": session_id, "run_id": run_id, "request_id": request_id, "skill": skill,
            "tool": tool.name, "permission_class": tool.permission, "decision": decision,
            "reason": reason, "ts": time.time(),
        })

    async def load_rules(self, path: Path) -> None:
        """Read the global rules saved by `save_rules` (a missing or broken file means none)."""
        self._rules_path = path
        try:
            raw = await asyncio.to_thread(path.read_text, encoding="utf-8")
            self.global_rules = PermissionRules.model_validate_json(raw).rules
        except FileNotFoundError:
            self.global_rules = {}
        except ValueError as exc:
            log.error("ignoring unreadable permission rules in %s: %s", path, exc)
            self.global_rules = {}

    async def save_rules(self, rules: dict[str, PermissionPolicy]) -> None:
        path = self._rules_path
        if path is not None:
            text = PermissionRules(rules=rules).model_dump_json(indent=2)
            await asyncio.to_thread(atomic_write_text, path, text)
        self.global_rules = dict(rules)
        log.info("global permission rules set: %s", rules or "defaults only")

