"""The OpenAI Chat Completions dialect (`POST {base}/chat/completions`, SSE).

Spoken by OpenAI and most servers that copy it: Ollama `/v1`, LM Studio, vLLM, llama.cpp,
OpenRouter, DeepSeek, Groq and Gemini's OpenAI endpoint. The stream is normalised into
`TextDelta`s, one `ToolCallReady` per call (assembled from argument fragments by `index`), a
`UsageReport` (from the `stream_options.include_usage` chunk, cached prompt tokens included:
`prompt_tokens_details`, DeepSeek's `prompt_cache_hit_tokens`) and `Finish` (`content_filter` is
`refused`, and so is a reply that is a `refusal`, whose text is the reply's). A stream that ends
without a `finish_reason` is an error, never a quiet short answer; one that ends cleanly after its
`finish_reason` but without `[DONE]` (ik_llama.cpp, older TGI) is whole.

Gemini quirks smoothed here: tool-call chunks without `index` (matched by id, else by position);
`finish_reason: "stop"` on a turn that called tools (reported as `tool_calls`); the thought
signature in a call's `extra_content`, kept in `ToolCallReady.provider_data` and sent back on that
call in the next request. A call whose arguments are not valid JSON is still reported, with
empty `arguments` and `provider_data["invalid_arguments"]` holding the raw text, so the agent can
tell the model instead of failing the run.

Reasoning (`delta.reasoning_content`: DeepSeek, vLLM, llama.cpp; `delta.reasoning`: OpenRouter,
newer vLLM) is never reply text. A turn that calls tools keeps it on its first call
(`provider_data["reasoning"]`, under the field it came in) and sends it back in that field, to
the same profile only: DeepSeek's thinking mode refuses a tool-call turn without its
`reasoning_content` (400).
Imports protocol, tools, errors and the providers package only.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit

from ..protocol import ImagePart, ModelInfo, TextPart, ToolCallPart, ToolResultPart
from .base import (
    REASONING, ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, ToolCallReady, UsageReport, kept_reasoning,
    token_count,
)
from .http import (
    CODE_ERROR, CODE_OVERLOADED, CODE_RATE_LIMITED, RETRY_STATUSES, HttpProvider, SseParser, StreamDecoder, decode_json,
    decode_json_bytes,
    image_placeholder,
)

log = logging.getLogger("opencode.providers.openai")

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
           "content_filter": "refused"}
# Where servers stream a reply's reasoning, in the order looked at (a server sending both sends the same).
_REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass
class _CallSlot:
    id: str = ""
    name: str = ""
    arguments: str = ""
    provider_data: dict[str, Any] = field(default_factory=dict)


class OpenAIProvider(HttpProvider):
    kind = "openai"

    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        extra = self.profile.extra.get("headers")
        if isinstance(extra, dict):  # e.g. OpenRouter's HTTP-Referer / X-Title
            headers.update({str(k): str(v) for k, v in extra.items()})
        if self._api_key:
            key_header = self.profile.extra.get("key_header")  # Azure OpenAI: `api-key`
            if isinstance(key_header, str) and key_header.lower() != "authorization":
                headers[key_header] = self._api_key
            else:
                headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def list_models(self) -> list[ModelInfo]:
        data = await self.get_json(f"{self.base_url}/models")
        items = data.get("data", []) if isinstance(data, dict) else []
        ids = sorted({str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")})
        return [ModelInfo(id=i, caps=self.profile.models.get(i)) for i in ids]

    # ------------------------------------------------------------------ request

    def request_fields(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "system", "content": request.system}] if request.system else [],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.max_tokens is not None:
            body[self._max_tokens_field()] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def _max_tokens_field(self) -> str:
        # OpenAI's newer models refuse `max_tokens`; most compatible servers only know it.
        configured = self.profile.extra.get("max_tokens_field")
        if configured in ("max_tokens", "max_completion_tokens"):
            return str(configured)
        host = urlsplit(self.base_url).hostname or ""
        return "max_completion_tokens" if host == "api.openai.com" else "max_tokens"

    async def wire_messages(self, message: ChatMessage) -> list[dict[str, Any]]:
        if message.role == "assistant":
            return [self._assistant(message)]
        out: list[dict[str, Any]] = []
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ToolResultPart):
                # One `tool` message per result, right after the assistant's calls.
                out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.content})
                if part.images:  # tool messages cannot carry images: show them in the user turn
                    content.append({"type": "text", "text": f"Images returned by {part.name}:"})
                    for image in part.images:
                        content.append(await self._image(image))
            elif isinstance(part, TextPart):
                if part.text:
                    content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append(await self._image(part))
        if content:
            if all(c["type"] == "text" for c in content):
                out.append({"role": "user", "content": "\n\n".join(c["text"] for c in content)})
            else:
                out.append({"role": "user", "content": content})
        return out

    def _assistant(self, message: ChatMessage) -> dict[str, Any]:
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        calls = []
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                call: dict[str, Any] = {
                    "id": part.id,
                    "type": "function",
                    "function": {"name": part.name, "arguments": json.dumps(part.arguments, ensure_ascii=False)},
                }
                extra = (part.provider_data or {}).get("extra_content")
                if extra is not None:  # Gemini's thought signature goes back where it came from
                    call["extra_content"] = extra
                calls.append(call)
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out.update(self._reasoning_fields(message))
            out["tool_calls"] = calls
        return out

    def _reasoning_fields(self, message: ChatMessage) -> dict[str, str]:
        """The reasoning this profile gave with the turn's calls, as the message field it came in."""
        kept = kept_reasoning(message, self.name)
        if not kept:
            return {}
        return {name: text for name, text in kept[0].items() if name in _REASONING_FIELDS and isinstance(text, str)}

    async def _image(self, part: ImagePart) -> dict[str, Any]:
        loaded = await self.image_b64(part)
        if loaded is None:
            return {"type": "text", "text": image_placeholder(part)}
        data, mime = loaded
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}

    # ------------------------------------------------------------------ stream

    def decoder(self) -> "OpenAIDecoder":
        return OpenAIDecoder(self)


class OpenAIDecoder(StreamDecoder):
    """One Chat Completions SSE body: text as it comes, then calls, usage and `Finish` at `[DONE]`."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider
        self.sse = SseParser()
        self.calls = _CallAssembler()
        self.finish_reason: str | None = None
        self.usage: UsageReport | None = None
        self.emitted = False
        self.reasoning: list[str] = []
        self.reasoning_field = ""  # the delta field the reasoning came in
        self.refused = False

    def feed(self, chunk: bytes) -> Iterator[StreamEvent]:
        # The per-token path: one JSON decode, a few dict lookups, one TextDelta.
        for event in self.sse.feed(chunk):
            data = event.data
            if not data.startswith("{") and data.strip() == "[DONE]":
                self.done = True
                return
            try:
                message = decode_json(data)
            except ValueError:
                raise self.provider.malformed(data) from None
            if not isinstance(message, dict):
                raise self.provider.error(f"unexpected stream data: {data[:120]!r}")
            error = message.get("error")
            if error:
                raise self._stream_error(error)
            usage = message.get("usage")
            if usage is not None and isinstance(usage, dict):
                self.usage = _usage(usage)
            choices = message.get("choices")
            if not choices or not isinstance(choices, list):
                continue
            for choice in choices:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if delta and isinstance(delta, dict):
                    text = delta.get("content")
                    if text and isinstance(text, str):
                        self.emitted = True
                        yield TextDelta(text)
                    fragments = delta.get("tool_calls")
                    if fragments and isinstance(fragments, list):
                        for fragment in fragments:
                            self.calls.merge(fragment)
                    if delta.get("reasoning_content") or delta.get("reasoning"):
                        self._keep_reasoning(delta)
                    refusal = delta.get("refusal")
                    if refusal and isinstance(refusal, str):  # what the model says instead of an answer
                        self.emitted = self.refused = True
                        yield TextDelta(refusal)
                reason = choice.get("finish_reason")
                if reason:
                    self.finish_reason = str(reason)

    def _keep_reasoning(self, delta: dict[str, Any]) -> None:
        """Collect the delta's reasoning (never reply text), from the first field that has it."""
        for name in _REASONING_FIELDS:
            piece = delta.get(name)
            if piece and isinstance(piece, str):
                self.reasoning.append(piece)
                self.reasoning_field = self.reasoning_field or name
                return

    def text_only(self, chunk: bytes) -> str | None:
        # One `data: {...}\n\n` event whose only news is `choices[0].delta.content`; anything
        # else (role, tool calls, finish, usage, an error, [DONE], a split event) is left to `feed`.
        if (not chunk.startswith(b"data: {") or not chunk.endswith(b"\n\n") or chunk.find(b"\n") != len(chunk) - 2
                or chunk[-3] == 13 or not self.sse.idle()):
            return None
        try:
            message = decode_json_bytes(chunk[6:-2])
        except ValueError:
            return None
        if message.__class__ is not dict or message.get("error") or message.get("usage") is not None:
            return None
        choices = message.get("choices")
        if choices.__class__ is not list or len(choices) != 1:
            return None
        choice = choices[0]
        if choice.__class__ is not dict or choice.get("index", 0) != 0 or choice.get("finish_reason"):
            return None
        delta = choice.get("delta")
        if delta.__class__ is not dict:
            return None
        text = delta.get("content")
        if text.__class__ is not str or not text:
            return None
        if len(delta) > 1 and (delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning")
                               or delta.get("refusal")):
            return None
        self.emitted = True
        return text

    def finish(self) -> Iterator[StreamEvent]:
        finish = self.finish_reason
        if finish is None:
            raise self.provider.truncated("a finish_reason")
        if not self.done:  # a cut connection fails the read: this body ended as the server meant it to
            log.debug("%s: the stream ended without [DONE] after finish_reason %r; taken as whole",
                      self.provider.name, finish)
        slots = self.calls.slots
        if slots and self.reasoning:  # sent back with the turn's calls (see `_reasoning_fields`)
            slots[0].provider_data[REASONING] = {"profile": self.provider.name,
                                                 self.reasoning_field: "".join(self.reasoning)}
        for slot in slots:
            yield self._ready(slot)
        if self.usage is not None:
            yield self.usage
        reason = _FINISH.get(finish, "stop")
        if slots:
            reason = "tool_calls" if reason == "stop" else reason
        elif reason == "tool_calls":
            reason = "stop"
        elif reason == "stop" and self.refused:
            reason = "refused"
        if finish not in _FINISH:
            log.info("%s: finish_reason %r reported as stop", self.provider.name, finish)
        yield Finish(reason)  # type: ignore[arg-type]

    def _ready(self, slot: _CallSlot) -> ToolCallReady:
        provider_data = dict(slot.provider_data)
        arguments: dict[str, Any] = {}
        raw = slot.arguments.strip()
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                arguments = parsed
            elif parsed is not None or raw != "null":
                provider_data["invalid_arguments"] = slot.arguments
        return ToolCallReady(
            id=slot.id or f"call_{uuid.uuid4().hex[:24]}",
            name=slot.name,
            arguments=arguments,
            provider_data=provider_data or None,
        )

    def _stream_error(self, error: Any) -> Exception:
        if isinstance(error, dict):
            message = str(error.get("message") or error)
            code = error.get("code")
        else:
            message, code = str(error), None
        status = code if isinstance(code, int) else None
        retryable = not self.emitted and (
            (status in RETRY_STATUSES) or code in ("server_error", "rate_limit_exceeded", "overloaded")
        )
        kind = CODE_RATE_LIMITED if status == 429 or code == "rate_limit_exceeded" else CODE_ERROR
        if status in (503, 529) or code == "overloaded":
            kind = CODE_OVERLOADED
        return self.provider.error(message, retryable=retryable, code=kind)


class _CallAssembler:
    """Collects streamed tool-call fragments into whole calls, in the order the calls began.

    A fragment goes to the call of its `index`; without one (Gemini) to the call of its `id`;
    without either, a fragment naming a function starts a call and any other continues the last.
    A server that reuses an index with a new id has started a new call.
    """

    def __init__(self) -> None:
        self.slots: list[_CallSlot] = []
        self._by_index: dict[int, _CallSlot] = {}

    def _new(self) -> _CallSlot:
        self.slots.append(_CallSlot())
        return self.slots[-1]

    def merge(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            return
        call_id = str(fragment.get("id") or "")
        index = fragment.get("index")
        function = fragment.get("function") or {}
        slot: _CallSlot | None = None
        if isinstance(index, int) and not isinstance(index, bool):
            slot = self._by_index.get(index)
            if slot is None or (call_id and slot.id and slot.id != call_id):
                slot = self._by_index[index] = self._new()
        elif call_id:
            slot = next((s for s in self.slots if s.id == call_id), None) or self._new()
        elif function.get("name") or not self.slots:
            slot = self._new()
        else:
            slot = self.slots[-1]
        if call_id and not slot.id:
            slot.id = call_id
        name = function.get("name")
        if isinstance(name, str) and name and not slot.name:
            slot.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            slot.arguments += arguments
        elif isinstance(arguments, dict):  # some servers send the object itself
            slot.arguments += json.dumps(arguments)
        extra = fragment.get("extra_content")
        if extra is not None:
            slot.provider_data["extra_content"] = extra


def _usage(usage: dict[str, Any]) -> UsageReport:
    """The usage chunk's counts. `prompt_tokens` is all the prompt's; the part read from the
    prompt cache is `prompt_tokens_details.cached_tokens` (OpenAI, OpenRouter, Gemini) or
    `prompt_cache_hit_tokens` (DeepSeek); OpenRouter adds what was written to it
    (`prompt_tokens_details.cache_write_tokens`, for models that charge for writes)."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = details.get("cached_tokens")
    if read is None:
        read = usage.get("prompt_cache_hit_tokens")
    return UsageReport(input_tokens=_count(usage.get("prompt_tokens")), output_tokens=_count(usage.get("completion_tokens")),
                       cache_read_tokens=_count(read), cache_write_tokens=_count(details.get("cache_write_tokens")))


def _count(value: Any) -> int:
    return token_count(value) or 0
