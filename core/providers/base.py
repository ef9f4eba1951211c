"""The provider-neutral request and stream-event model every wire dialect is normalised into.

A `Provider` turns a `ChatRequest` into an async stream of a small closed set of events
(`TextDelta`, `ToolCallReady`, `UsageReport`, `Finish`) and raises `ProviderError` on failure.
Providers never touch the bus or the store; they get an aiohttp `ClientSession` from the service.
Imports protocol, tools (for `ToolSpec`) and errors only.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Union

import aiohttp

from ..protocol import ImagePart, ModelInfo, Part, ProviderProfile, TextPart, ToolCallPart, ToolResultPart
from ..tools import ToolSpec


@dataclass
class ChatMessage:
    """One turn of history. Tool results travel as `ToolResultPart`s in a `user` turn."""

    role: Literal["user", "assistant"]
    parts: list[Part]
    # Its JSON in each provider's dialect (by `HttpProvider.wire_key`, `text_wire_key` in requests
    # without tools), filled on first use: the
    # turns of a chat are shared between its runs and never change, and every request re-sends them.
    encoded: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def has_images(self) -> bool:
        """Whether it carries images (their encodings are too big to keep)."""
        return any(isinstance(p, ImagePart) or getattr(p, "images", None) for p in self.parts)


def tools_as_text(turn: ChatMessage) -> ChatMessage:
    """`turn` with its tool calls and results written out as text (`[called f({...})]`,
    `[f returned: ...]`), for a request that defines no tools; `turn` itself if it has none.

    Why: once a session's tools are gone (a tool skill deselected, a model declared without
    tools), its history still holds the calls made before. Anthropic refuses tool blocks in a
    request without tools (400), and so do some OpenAI-compatible servers; as text the model
    still sees what was done. Consecutive text is joined, so no dialect runs pieces together.
    """
    if not any(isinstance(p, (ToolCallPart, ToolResultPart)) for p in turn.parts):
        return turn
    parts: list[Part] = []
    texts: list[str] = []
    for part in turn.parts:
        if isinstance(part, ToolCallPart):
            texts.append(f"[called {part.name}({json.dumps(part.arguments, ensure_ascii=False)})]")
        elif isinstance(part, ToolResultPart):
            texts.append(f"[{part.name} {'failed' if part.is_error else 'returned'}: {part.content}]")
            if part.images:
                parts.append(TextPart(text="\n\n".join(texts)))
                parts.extend(part.images)
                texts = []
        elif isinstance(part, TextPart):
            if part.text:
                texts.append(part.text)
        else:
            if texts:
                parts.append(TextPart(text="\n\n".join(texts)))
                texts = []
            parts.append(part)
    if texts:
        parts.append(TextPart(text="\n\n".join(texts)))
    return ChatMessage(turn.role, parts)


@dataclass
class ChatRequest:
    model: str
    system: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(slots=True)
class TextDelta:
    """Streamed text. Not frozen, unlike the other events: one is made per token, and a frozen
    dataclass's `__init__` (through `object.__setattr__`) costs three times as much. Treat it
    as read-only all the same."""

    text: str
    kind: Literal["text"] = "text"


# The key of a call's `provider_data` that holds the reasoning of the turn that made it (on the
# turn's first call), in the form its dialect sends it back, with the `profile` it came from:
# OpenAI-compatible servers the message field it came in (`{"profile": "deepseek",
# "reasoning_content": "..."}`), Anthropic its thinking blocks (`"blocks"`, signatures included).
# Why keep it: a thinking model's server refuses (400) a later request whose tool-call turn lacks
# it (DeepSeek's thinking mode; Anthropic's extended thinking, and servers that think by default
# behind its format). Stored with the call, it survives in the session's history; a turn without
# calls needs none, so none is kept.
REASONING = "reasoning"


def kept_reasoning(message: ChatMessage, profile: str) -> list[dict[str, Any]]:
    """The reasoning `message`'s calls keep (see `REASONING`) that came from `profile`, in order.

    Why only from the same profile: another server may refuse the fields (Groq rejects an
    assistant message's `reasoning_content`, 400) or another model's signatures, and a session
    that switched to it would then fail at every later request.
    """
    out: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ToolCallPart) and part.provider_data:
            kept = part.provider_data.get(REASONING)
            if isinstance(kept, dict) and kept.get("profile") == profile:
                out.append(kept)
    return out


@dataclass(frozen=True)
class ToolCallReady:
    """A complete tool call (arguments fully assembled and parsed)."""

    id: str
    name: str
    arguments: dict[str, Any]
    provider_data: dict[str, Any] | None = None
    kind: Literal["tool_call"] = "tool_call"


def token_count(value: Any) -> int | None:
    """A token count as a server sent it (an int; a float from some), None when it is no count."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e15:
        return int(value)
    return None


@dataclass(frozen=True)
class UsageReport:
    """A turn's token counts. `input_tokens` is every prompt token; `cache_read_tokens` and
    `cache_write_tokens` are the parts of it read from and written to the provider's prompt cache
    (see `protocol.Usage`)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True)
class Finish:
    """The stream ended properly; `reason` is normalised to stop | tool_calls | length (the reply hit
    its token limit) | refused (the provider stopped it: Anthropic `refusal`, OpenAI `content_filter`)."""

    reason: Literal["stop", "tool_calls", "length", "refused"]
    kind: Literal["finish"] = "finish"


StreamEvent = Union[TextDelta, ToolCallReady, UsageReport, Finish]

# Takes a text delta as it arrives off the network; False declines it, and it is yielded instead.
TextSink = Callable[[str], bool]

# Resolves an image reference to (bytes, mime type) for vision requests.
ImageLoader = Callable[[ImagePart], Awaitable[tuple[bytes, str]]]


class Provider(ABC):
    """One wire dialect. Subclasses implement `stream` and `list_models`."""

    kind: str = ""

    def __init__(
        self,
        profile: ProviderProfile,
        api_key: str | None,
        http: aiohttp.ClientSession,
        image_loader: ImageLoader | None = None,
    ) -> None:
        self.profile = profile
        self._api_key = api_key
        self.http = http
        self.image_loader = image_loader

    @abstractmethod
    def stream(self, request: ChatRequest, on_text: TextSink | None = None) -> AsyncIterator[StreamEvent]:
        """Stream one model turn. Must end with `Finish` or raise `ProviderError`.

        `on_text`, when given, may be handed text deltas synchronously, straight from the network
        read, instead of their being yielded (the relay's hot path); a provider is free to ignore
        it. Text it declines is yielded, and nothing is yielded ahead of text it took.
        """

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models the provider offers (`/models`, `/api/tags`)."""

    def reply_tokens(self, model: str) -> int:
        """How many tokens a request asks the model to keep for its reply, when the dialect fixes
        that (0: it does not). The history leaves that much of the context free: a server that
        counts prompt plus reply against the context (Anthropic's) refuses a request that does not."""
        return 0
