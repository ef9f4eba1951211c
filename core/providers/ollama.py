"""The Ollama native dialect (`POST {base}/api/chat`, NDJSON lines, `GET {base}/api/tags`).

Each line is a JSON object; the last has `done: true` with `done_reason`, `prompt_eval_count` and
`eval_count`. A stream that ends without it, or a line `{"error": "..."}`, raises `ProviderError`.
Tool calls arrive whole (arguments as an object, usually without an id: one is made up). Images
travel as a base64 list in a message's `images`. From `profile.extra`: `keep_alive` (how long
Ollama keeps the model loaded) and `options` (e.g. `num_ctx`: Ollama's default context is small
enough to silently cut an agent's prompt, so the preset raises it).
Imports protocol, tools, errors and the providers package only.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Iterator

from ..protocol import ImagePart, ModelInfo, TextPart, ToolCallPart, ToolResultPart
from .base import ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, ToolCallReady, UsageReport
from .http import HttpProvider, LineParser, StreamDecoder, image_placeholder

log = logging.getLogger("opencode.providers.ollama")


class OllamaProvider(HttpProvider):
    kind = "ollama"
    # NDJSON (`application/x-ndjson`); a JSON body, even an `{"error": ...}`, is one more line.
    stream_type = None

    def url(self) -> str:
        return f"{self.base_url}/api/chat"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        if self._api_key:  # Ollama behind an authenticating proxy, or ollama.com
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def list_models(self) -> list[ModelInfo]:
        data = await self.get_json(f"{self.base_url}/api/tags")
        items = data.get("models", []) if isinstance(data, dict) else []
        ids = sorted({str(m.get("name") or m.get("model")) for m in items if isinstance(m, dict) and (m.get("name") or m.get("model"))})
        return [ModelInfo(id=i, caps=self.profile.models.get(i)) for i in ids]

    # ------------------------------------------------------------------ request

    def request_fields(self, request: ChatRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        extra = self.profile.extra
        options: dict[str, Any] = dict(extra["options"]) if isinstance(extra.get("options"), dict) else {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if options:
            body["options"] = options
        if extra.get("keep_alive") is not None:
            body["keep_alive"] = extra["keep_alive"]
        return body

    async def wire_messages(self, message: ChatMessage) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        text: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                if part.text:
                    text.append(part.text)
            elif isinstance(part, ImagePart):
                await self._image(part, images, text)
            elif isinstance(part, ToolCallPart) and message.role == "assistant":
                calls.append({"function": {"name": part.name, "arguments": part.arguments}})
            elif isinstance(part, ToolResultPart) and message.role == "user":
                out.append({"role": "tool", "content": part.content, "tool_name": part.name})
                for image in part.images:  # shown to the model in the user turn that follows
                    await self._image(image, images, text)
        if message.role == "assistant":
            reply: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if calls:
                reply["tool_calls"] = calls
            return [reply]
        if text or images:
            turn: dict[str, Any] = {"role": "user", "content": "\n\n".join(text)}
            if images:
                turn["images"] = images
            out.append(turn)
        return out

    async def _image(self, part: ImagePart, images: list[str], text: list[str]) -> None:
        loaded = await self.image_b64(part)
        if loaded is None:
            text.append(image_placeholder(part))
        else:
            images.append(loaded[0])

    # ------------------------------------------------------------------ stream

    def decoder(self) -> "OllamaDecoder":
        return OllamaDecoder(self)


class OllamaDecoder(StreamDecoder):
    """One NDJSON body: text and whole tool calls as they come, usage and `Finish` at `done`."""

    def __init__(self, provider: OllamaProvider) -> None:
        self.provider = provider
        self.lines = LineParser()
        self.called = self.emitted = False

    def feed(self, chunk: bytes) -> Iterator[StreamEvent]:
        return self._lines(self.lines.feed(chunk))

    def finish(self) -> Iterator[StreamEvent]:
        if not self.done:  # a last line without a line ending may still be the final one
            yield from self._lines(self.lines.finish())
        if not self.done:
            raise self.provider.truncated('the final "done" line')

    def _lines(self, lines: list[str]) -> Iterator[StreamEvent]:
        provider = self.provider
        for line in lines:
            if not line.strip():
                continue
            chunk = provider.loads(line)
            if not isinstance(chunk, dict):
                raise provider.error(f"unexpected stream data: {line[:120]!r}")
            if chunk.get("error"):
                error = str(chunk["error"])
                raise provider.error(error, retryable=not self.emitted and "overloaded" in error.lower())
            message = chunk.get("message") or {}
            text = message.get("content")
            if isinstance(text, str) and text:
                self.emitted = True
                yield TextDelta(text)
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    self.called = self.emitted = True
                    yield _ready(call)
            if chunk.get("done"):
                yield UsageReport(
                    input_tokens=int(chunk.get("prompt_eval_count") or 0),
                    output_tokens=int(chunk.get("eval_count") or 0),
                )
                reason = chunk.get("done_reason") or "stop"
                yield Finish("length" if reason == "length" else "tool_calls" if self.called else "stop")
                self.done = True
                return


def _ready(call: dict[str, Any]) -> ToolCallReady:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # some versions and proxies send the JSON text
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    valid = isinstance(arguments, dict) or arguments is None
    return ToolCallReady(
        id=str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
        name=str(function.get("name") or ""),
        arguments=arguments if isinstance(arguments, dict) else {},
        provider_data=None if valid else {"invalid_arguments": str(arguments)},
    )
