"""A scripted model: a real `Provider` subclass whose turns are queued by the test.

Each request takes the next scripted turn (a list of stream events, or an async generator
function of the request for turns that must coordinate with others); every request is
recorded so tests assert on what the agent sent (history, tools, tool results).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator, Callable

from opencode_agent.core.agent import ResolvedModel
from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import ModelCaps, ModelInfo, ProviderProfile
from opencode_agent.core.providers.base import (
    ChatRequest, Finish, Provider, StreamEvent, TextDelta, TextSink, ToolCallReady, UsageReport,
)

Turn = list[StreamEvent] | Callable[[ChatRequest], AsyncIterator[StreamEvent]] | ProviderError


def text_turn(*chunks: str, input_tokens: int = 10, output_tokens: int = 5) -> list[StreamEvent]:
    return [*(TextDelta(c) for c in chunks), UsageReport(input_tokens, output_tokens), Finish("stop")]


def tool_turn(*calls: tuple[str, str, dict[str, Any]]) -> list[StreamEvent]:
    return [*(ToolCallReady(id=i, name=n, arguments=a) for i, n, a in calls), UsageReport(5, 5), Finish("tool_calls")]


class ScriptedProvider(Provider):
    kind = "scripted"

    def __init__(self, turns: list[Turn] | None = None,
                 by_role: Callable[[ChatRequest], Turn] | None = None) -> None:
        profile = ProviderProfile(name="scripted", kind="openai", base_url="http://127.0.0.1:9", default_model="m")
        super().__init__(profile, None, None)  # type: ignore[arg-type]
        self.turns: deque[Turn] = deque(turns or [])
        self.by_role = by_role
        self.requests: list[ChatRequest] = []
        self.closed_streams = 0

    async def stream(self, request: ChatRequest, on_text: TextSink | None = None) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        turn = self.by_role(request) if self.by_role else self.turns.popleft()
        try:
            if isinstance(turn, ProviderError):
                raise turn
            if callable(turn):
                async for ev in turn(request):
                    yield ev
                return
            for ev in turn:
                await asyncio.sleep(0)
                yield ev
        finally:
            self.closed_streams += 1

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id="m")]


class ScriptedResolver:
    def __init__(self, provider: ScriptedProvider, caps: ModelCaps | None = None) -> None:
        self.provider = provider
        self.caps = caps or ModelCaps(tools=True, context_tokens=32000, input_price=1.0, output_price=2.0)

    async def resolve(self, provider_name: str | None, model: str | None) -> ResolvedModel:
        return ResolvedModel(provider=self.provider, model=model or "m", caps=self.caps)


class _CyclicBarrier:
    """`asyncio.Barrier` (Python 3.11+) as these tests use it, for runs on Python 3.10."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self._arrived = 0
        self._open = asyncio.Event()

    async def wait(self) -> None:
        gate = self._open
        self._arrived += 1
        if self._arrived == self.parties:
            self._arrived, self._open = 0, asyncio.Event()
            gate.set()
        else:
            await gate.wait()


Barrier: Any = getattr(asyncio, "Barrier", _CyclicBarrier)
