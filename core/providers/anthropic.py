"""The Anthropic Messages dialect (`POST {base}/v1/messages`, SSE with typed events).

Request: `x-api-key` and `anthropic-version: 2023-06-01` headers; the system prompt in `system`;
`max_tokens` always set (Anthropic requires it): the profile's `extra.max_tokens`, else the model's
own limit for the Claude families (`default_max_tokens`), never above the request's cap; tool
calls as `tool_use` blocks in assistant turns and results as `tool_result` blocks at the start of
the next user turn; images as base64 `image` blocks.

Stream: `message_start` (input usage: the uncached rest, cache reads and cache writes),
`content_block_start/delta/stop` (`text_delta`; `input_json_delta` fragments for `tool_use`,
parsed at the block's stop), `message_delta` (stop reason, output usage, and in newer API versions
the input side restated; `max_tokens` is `length`, `refusal` is `refused`), `message_stop`, `ping`. An in-stream `error` event raises `ProviderError`
with Anthropic's message; `overloaded_error` (and `api_error`) is retryable only while no output
has been streamed. Usage is reported once, at the end, so nothing is emitted before real output.

Prompt caching: three `cache_control: ephemeral` breakpoints (of the four a request may hold), one
on the system prompt (else the last tool), which keeps tools and instructions cached, one on the
last block of the last turn that may carry one (not a thinking block), so each tool round and each
next message reads the whole conversation before it from the cache, and one where the request
before ended (the turn before the last assistant turn: `cache_marked_turns`), so a round of more
blocks than Anthropic looks back over (about 20) still reads it. Prompts under the model's
minimum (1,024 tokens for most, 4,096 for some) are simply not cached. A mark is put on a copy
of its turn (`cache_breakpoint`); the turn's kept encoding stays plain. A profile turns it
off with `extra.prompt_cache: false` (the system prompt then goes as a plain string).

Thinking (extended thinking; servers that think by default behind this format: DeepSeek's
`/anthropic`, MiniMax-M2) is never reply text. Its `thinking` blocks (text and `signature`) and
`redacted_thinking` blocks (`data`) are kept on the next tool call (`provider_data["reasoning"]`)
and sent back, exactly, to the same profile only: those before the turn's first call at the start
of that assistant turn (the API refuses (400) a tool-use turn of a thinking model that does not
start with them), those streamed between calls (interleaved thinking) just after the call before
the one they led to, ahead of any text said between the two, in the order they came. The turn's
text goes back where it streamed too, between the calls it came between (the agent keeps a
reply's text and calls in the order they streamed).
Imports protocol, tools, errors and the providers package only.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterator

from ..protocol import ImagePart, ModelInfo, TextPart, ToolCallPart, ToolResultPart
from .base import (
    REASONING, ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, ToolCallReady, UsageReport, token_count,
)
from .http import (
    CODE_ERROR, CODE_OVERLOADED, CODE_QUOTA, CODE_RATE_LIMITED, HttpProvider, SseParser, StreamDecoder, image_placeholder,
)

log = logging.getLogger("opencode.providers.anthropic")

API_VERSION = "2023-06-01"
# What every model behind this dialect takes (Claude 3, Anthropic-compatible servers).
DEFAULT_MAX_TOKENS = 4096
# Claude 3.5 writes up to 8,192 tokens a reply; 3.7 and the 4 families and later at least 32,000
# (Opus 4 and 4.1; the others 64,000). The id's family, dated snapshot or not.
_CLAUDE_FAMILY = re.compile(r"claude-(?:(?:opus|sonnet|haiku)-(\d+)|3-([57]))")
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
         "model_context_window_exceeded": "length", "refusal": "refused"}
_RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
# Anthropic accepts only these characters in tool ids; ids from other providers are mapped.
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def tool_id(value: str) -> str:
    return _BAD_ID_CHARS.sub("_", value) or "call"


def default_max_tokens(model: str) -> int:
    """The most a reply of `model` may take when nothing else says: its family's output limit.

    Why not one figure: 4,096 cuts a current Claude's long answers (code, a workflow) short, and a
    figure above a model's limit is refused (400), as it is by Anthropic-compatible servers that
    run other models; those, and ids not recognised, get 4,096.
    """
    found = _CLAUDE_FAMILY.search(model)
    if found is None:
        return DEFAULT_MAX_TOKENS
    if found.group(1) is not None:
        return 32_000 if int(found.group(1)) >= 4 else DEFAULT_MAX_TOKENS
    return 32_000 if found.group(2) == "7" else 8192


class AnthropicProvider(HttpProvider):
    kind = "anthropic"

    def _api(self, path: str) -> str:
        # Accept a base with or without the trailing `/v1`.
        base = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        return f"{base}/v1/{path}"

    def url(self) -> str:
        return self._api("messages")

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "anthropic-version": API_VERSION,
        }
        extra = self.profile.extra.get("headers")
        if isinstance(extra, dict):  # e.g. anthropic-beta
            headers.update({str(k): str(v) for k, v in extra.items()})
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    async def list_models(self) -> list[ModelInfo]:
        data = await self.get_json(self._api("models?limit=1000"))
        items = data.get("data", []) if isinstance(data, dict) else []
        ids = [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]
        return [ModelInfo(id=i, caps=self.profile.models.get(i)) for i in ids]

    # ------------------------------------------------------------------ request

    @property
    def cache_breakpoints(self) -> bool:  # type: ignore[override]
        """Prompt caching, unless the profile turns it off (`extra.prompt_cache: false`)."""
        return self.profile.extra.get("prompt_cache") is not False

    def request_fields(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": self._max_tokens(request),
            "messages": [],
            "stream": True,
        }
        cache = self.cache_breakpoints
        if request.system:
            # The cached prefix is tools, then system, then messages: a breakpoint on the system
            # prompt keeps the tools and instructions cached when the conversation changes.
            body["system"] = [{"type": "text", "text": request.system, "cache_control": _ephemeral()}] if cache \
                else request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
            if cache and not request.system:
                body["tools"][-1]["cache_control"] = _ephemeral()
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def cache_breakpoint(self, wire: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The last turn with a breakpoint on its last block that may carry one (never a thinking
        block), so the next request (a tool round, the next message) reads all of this one from
        the cache. New dicts for the marked message, its content list and the block: the turn's
        own stay as they are."""
        if not wire or not isinstance(content := wire[-1].get("content"), list):
            return wire
        for i in range(len(content) - 1, -1, -1):
            if content[i].get("type") in _CACHEABLE_BLOCKS:
                marked = [*content[:i], {**content[i], "cache_control": _ephemeral()}, *content[i + 1:]]
                return [*wire[:-1], {**wire[-1], "content": marked}]
        return wire

    def cache_marked_turns(self, messages: list[ChatMessage]) -> set[int]:
        """The last turn, and the one before the last assistant turn: where the previous request
        of this chat put its last breakpoint. Anthropic finds a cached prefix only within about 20
        blocks before a breakpoint, and a tool round of many calls and results adds more than
        that: without this mark such a round would write the whole conversation to the cache
        again (at 1.25 times the input price) instead of reading it. With the system prompt's (or
        last tool's) mark that makes three of the four a request may hold."""
        if not self.cache_breakpoints or not messages:
            return set()
        marked = {len(messages) - 1}
        for i in range(len(messages) - 1, 0, -1):
            if messages[i].role == "assistant":
                marked.add(i - 1)
                break
        return marked

    def _max_tokens(self, request: ChatRequest) -> int:
        """`reply_tokens`, or the request's own cap (what is left of a budget) when it is lower."""
        limit = self.reply_tokens(request.model)
        return limit if request.max_tokens is None else min(limit, request.max_tokens)

    def reply_tokens(self, model: str) -> int:
        """The profile's `extra.max_tokens`, else the model's (`default_max_tokens`)."""
        configured = self.profile.extra.get("max_tokens")
        if isinstance(configured, int) and not isinstance(configured, bool) and configured >= 1:
            return configured
        return default_max_tokens(model)

    async def wire_messages(self, message: ChatMessage) -> list[dict[str, Any]]:
        content = await self._content(message)
        return [{"role": message.role, "content": content}] if content else []  # empty turns are rejected

    async def _content(self, message: ChatMessage) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        blocks: list[dict[str, Any]] = []
        # The thinking that led to a call opens the stretch since the call before it, ahead of the
        # words said there: the turn's first call's opens the turn, a later one's (interleaved
        # thinking) follows the call before it, where it streamed.
        stretch = 0
        for part in message.parts:
            if isinstance(part, TextPart):
                if part.text:  # empty text blocks are rejected
                    blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                blocks.append(await self._image(part))
            elif isinstance(part, ToolCallPart) and message.role == "assistant":
                blocks[stretch:stretch] = self._kept_thinking(part)
                blocks.append({"type": "tool_use", "id": tool_id(part.id), "name": part.name, "input": part.arguments})
                stretch = len(blocks)
            elif isinstance(part, ToolResultPart) and message.role == "user":
                inner: list[dict[str, Any]] = [{"type": "text", "text": part.content}] if part.content else []
                inner += [await self._image(image) for image in part.images]
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id(part.tool_call_id), "content": inner}
                if part.is_error:
                    result["is_error"] = True
                results.append(result)
        # Tool results must open the user turn that answers the calls.
        return results + blocks

    def _kept_thinking(self, call: ToolCallPart) -> list[dict[str, Any]]:
        """The thinking blocks `call` keeps from this profile, in the order they came (the decoder
        keeps on each call what came since the call before it)."""
        kept = (call.provider_data or {}).get(REASONING)
        if not isinstance(kept, dict) or kept.get("profile") != self.name:
            return []
        return [block for block in kept.get("blocks") or () if isinstance(block, dict)]

    async def _image(self, part: ImagePart) -> dict[str, Any]:
        loaded = await self.image_b64(part)
        if loaded is None:
            return {"type": "text", "text": image_placeholder(part)}
        data, mime = loaded
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}

    # ------------------------------------------------------------------ stream

    def decoder(self) -> "AnthropicDecoder":
        return AnthropicDecoder(self)


class AnthropicDecoder(StreamDecoder):
    """One Messages SSE body: text as it comes, each tool call at its block's stop, usage and
    `Finish` at `message_stop`."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self.provider = provider
        self.sse = SseParser()
        self.blocks: dict[int, dict[str, Any]] = {}
        # The usage fields as last reported (`message_start`, restated by `message_delta`).
        self.usage: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.emitted = False
        self.thinking: list[dict[str, Any]] = []  # blocks finished since the last tool call

    def feed(self, chunk: bytes) -> Iterator[StreamEvent]:
        provider = self.provider
        for event in self.sse.feed(chunk):
            data = provider.loads(event.data)
            if not isinstance(data, dict):
                raise provider.error(f"unexpected stream data: {event.data[:120]!r}")
            kind = data.get("type") or event.event
            if kind == "content_block_delta":  # the per-token event first
                delta = data.get("delta")
                if not isinstance(delta, dict):
                    continue
                delta_type = delta.get("type")
                if delta_type == "text_delta":
                    text = delta.get("text")
                    if text:
                        self.emitted = True
                        yield TextDelta(str(text))
                elif delta_type == "input_json_delta":
                    block = self.blocks.get(int(data.get("index", 0)))
                    if block is not None:
                        block["json"] += str(delta.get("partial_json") or "")
                elif delta_type in _THINKING_DELTAS:  # pieces joined at the block's stop (it may be long)
                    block = self.blocks.get(int(data.get("index", 0)))
                    if block is not None:
                        name, pieces = _THINKING_DELTAS[delta_type]
                        block.setdefault(pieces, []).append(str(delta.get(name) or ""))
            elif kind == "error":
                raise self._stream_error(data.get("error"))
            elif kind == "message_start":
                self._take_usage((data.get("message") or {}).get("usage"))
            elif kind == "content_block_start":
                block = dict(data.get("content_block") or {})
                block["json"] = ""
                self.blocks[int(data.get("index", 0))] = block
            elif kind == "content_block_stop":
                block = self.blocks.pop(int(data.get("index", 0)), None)
                if block is None:
                    continue
                if block.get("type") == "tool_use":
                    self.emitted = True
                    yield self._ready(block)
                elif block.get("type") in ("thinking", "redacted_thinking"):
                    self.thinking.append(_thinking(block))
            elif kind == "message_delta":
                self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
                # Cumulative counts; newer API versions restate the input side (cache counts too).
                self._take_usage(data.get("usage"))
            elif kind == "message_stop":
                self.done = True
                return

    def _take_usage(self, usage: Any) -> None:
        """Keep each count `usage` gives; one it leaves out or sends as null keeps its last value."""
        if isinstance(usage, dict):
            for name in _USAGE_FIELDS:
                if (count := token_count(usage.get(name))) is not None:
                    self.usage[name] = count

    def finish(self) -> Iterator[StreamEvent]:
        if not self.done:
            raise self.provider.truncated("message_stop")
        usage = self.usage
        read, write = usage.get("cache_read_input_tokens", 0), usage.get("cache_creation_input_tokens", 0)
        # `input_tokens` here is only what came after the last cache breakpoint: all the prompt's
        # tokens (what the context holds) are the three together.
        yield UsageReport(input_tokens=usage.get("input_tokens", 0) + read + write,
                          output_tokens=usage.get("output_tokens", 0), cache_read_tokens=read, cache_write_tokens=write)
        stop_reason = self.stop_reason
        if stop_reason not in _STOP:
            log.info("%s: stop_reason %r reported as stop", self.provider.name, stop_reason)
        yield Finish(_STOP.get(stop_reason or "", "stop"))  # type: ignore[arg-type]

    def _ready(self, block: dict[str, Any]) -> ToolCallReady:
        raw = block["json"].strip()
        arguments: Any = block.get("input") or {}
        provider_data = None
        if raw:
            try:
                arguments = json.loads(raw)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                arguments, provider_data = {}, {"invalid_arguments": block["json"]}
        if self.thinking:  # the turn's thinking so far goes back with its first call
            provider_data = {**(provider_data or {}), REASONING: {"profile": self.provider.name, "blocks": self.thinking}}
            self.thinking = []
        return ToolCallReady(
            id=str(block.get("id") or ""),
            name=str(block.get("name") or ""),
            arguments=arguments,
            provider_data=provider_data,
        )

    def _stream_error(self, error: Any) -> Exception:
        error = error if isinstance(error, dict) else {"message": str(error)}
        kind = str(error.get("type") or "error")
        message = str(error.get("message") or kind)
        code = {"overloaded_error": CODE_OVERLOADED, "rate_limit_error": CODE_RATE_LIMITED}.get(kind, CODE_ERROR)
        if kind == "billing_error":
            code = CODE_QUOTA
        return self.provider.error(
            f"{message} ({kind})",
            retryable=kind in _RETRYABLE_STREAM_ERRORS and not self.emitted,
            code=code,
        )


# Blocks a cache breakpoint may be put on (thinking blocks may not carry one).
_CACHEABLE_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "document"})


def _ephemeral() -> dict[str, str]:
    """A cache breakpoint: the prefix up to here is kept for five minutes, each read renewing it."""
    return {"type": "ephemeral"}


# A thinking block's deltas: (the field they add to, where the block collects them).
_THINKING_DELTAS = {"thinking_delta": ("thinking", "thinking_pieces"),
                    "signature_delta": ("signature", "signature_pieces")}


def _thinking(block: dict[str, Any]) -> dict[str, Any]:
    """A finished thinking block as the API takes it back: exactly what came, nothing else."""
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": str(block.get("data") or "")}
    out = {"type": "thinking"}
    for name, pieces in _THINKING_DELTAS.values():
        out[name] = str(block.get(name) or "") + "".join(block.get(pieces, ()))
    return out


_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
