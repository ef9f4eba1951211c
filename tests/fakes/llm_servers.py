"""A loopback aiohttp server speaking the exact OpenAI, Anthropic and Ollama wire formats.

Tests queue what the next requests get, in order: a `Reply` (text, tool calls, usage; encoded in
the dialect of the route it lands on), a `Stream` (raw chunks, for faults: truncation, corrupt
data, in-stream errors, a stall that holds the connection open until the server closes) or a
`Fail` (an HTTP error with a body and headers). Every request is recorded (`requests`) with its
path, headers and JSON body, so tests assert on what the provider actually sent.

Routes: OpenAI under `/v1` (`/v1/chat/completions`, `/v1/models`), Anthropic under `/anthropic`
(`/anthropic/v1/messages`, `/anthropic/v1/models`), Ollama at the root (`/api/chat`,
`/api/tags`). Like the real API, the Anthropic route refuses (400) a request that holds tool
blocks but defines no tools. The encoders are public so a test can take a well-formed stream and break it.
`tests/test_providers_*` prove the encoders well-formed by parsing them with the official SDKs.
With `thinking` set, the server is a thinking model's: like DeepSeek's thinking mode it refuses an
assistant tool-call message without its `reasoning_content`, and like Anthropic's extended
thinking an assistant turn with `tool_use` that does not start with a thinking block, each with
the real API's error.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Union

import pytest
from aiohttp import web

# --------------------------------------------------------------------------- scripts


@dataclass
class FakeToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    extra_content: dict[str, Any] | None = None  # Gemini's thought signature lives here
    # Anthropic interleaved thinking (beta `interleaved-thinking-2025-05-14`): a thinking block
    # streamed just before this call's `tool_use` block, signed with `thinking_signature`.
    thinking: str = ""
    thinking_signature: str = "SW50ZXJsZWF2ZWQ="
    # Anthropic: words the model streams after the call before this one (after that thinking), in
    # a `text` block of their own just before this call's `tool_use` block.
    text: str = ""


@dataclass
class Reply:
    """What the model says; encoded in the wire format of the route that serves it."""

    text: str = ""
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    input_tokens: int = 11
    output_tokens: int = 7
    finish: str | None = None  # the dialect's own word; default: stop, or tool calls if any
    # Thought before the text: OpenAI `reasoning_content` deltas (`reasoning_field`: OpenRouter's
    # `reasoning`), an Anthropic `thinking` block with `signature`, then a `redacted_thinking`
    # block holding `redacted` if set.
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"
    refusal: str = ""  # OpenAI: `refusal` deltas instead of text
    signature: str = "EqQBCgIYAhIM"
    redacted: str = ""
    # Prompt tokens read from the provider's cache and written to it, parts of `input_tokens` (all
    # the prompt's), in each dialect's fields: OpenAI `prompt_tokens_details` (`cache_write_tokens`
    # as OpenRouter adds it), or DeepSeek's `prompt_cache_hit_tokens`/`_miss_tokens` with
    # `deepseek_usage`; Anthropic `cache_read_input_tokens`/`cache_creation_input_tokens` beside
    # the uncached rest, in `message_start`, or with `usage_at_end` restated in `message_delta`
    # (what `message_start` said then holds no cache counts yet).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    deepseek_usage: bool = False
    usage_at_end: bool = False


@dataclass
class Stream:
    """Raw response chunks, sent one write each; `stall_after` holds the connection after n."""

    chunks: list[bytes]
    content_type: str = "text/event-stream"
    stall_after: int | None = None
    pause: float = 0.0  # seconds between writes: the client reads the body while it streams


@dataclass
class Fail:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Script = Union[Reply, Stream, Fail]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _pieces(text: str) -> list[str]:
    """Split text into word-ish pieces that concatenate back to it."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def _fragments(value: str, size: int = 7) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _call_id(call: FakeToolCall, position: int, prefix: str) -> str:
    return call.id or f"{prefix}_{position:04d}"


def joined(events: list[Any]) -> list[Any]:
    """Events with adjacent text deltas joined. How a reply's text splits into deltas follows the
    network reads (a read holding several tokens yields one delta), so tests compare text this way."""
    from opencode_agent.core.providers.base import TextDelta

    out: list[Any] = []
    for event in events:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


# --------------------------------------------------------------------------- OpenAI


def openai_chunks(reply: Reply, model: str = "gpt-test") -> list[bytes]:
    """`chat.completion.chunk` events as OpenAI streams them with `include_usage`, then `[DONE]`."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        return sse({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None, "choices": choices, "usage": usage,
        })

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    said = reply.text or not (reply.tool_calls or reply.refusal)
    out = [chunk([choice({"role": "assistant", "content": "" if said else None})])]
    out += [chunk([choice({"content": None, reply.reasoning_field: piece})]) for piece in _pieces(reply.reasoning)]
    out += [chunk([choice({"content": piece})]) for piece in _pieces(reply.text)]
    out += [chunk([choice({"content": None, "refusal": piece})]) for piece in _pieces(reply.refusal)]
    for position, call in enumerate(reply.tool_calls):
        out.append(chunk([choice({"tool_calls": [{
            "index": position, "id": _call_id(call, position, "call"), "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }]})]))
        out += [
            chunk([choice({"tool_calls": [{"index": position, "function": {"arguments": fragment}}]})])
            for fragment in _fragments(json.dumps(call.arguments))
        ]
    out.append(chunk([choice({}, reply.finish or ("tool_calls" if reply.tool_calls else "stop"))]))
    usage: dict[str, Any] = {
        "prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    if reply.deepseek_usage:
        usage.update(prompt_cache_hit_tokens=reply.cache_read_tokens,
                     prompt_cache_miss_tokens=reply.input_tokens - reply.cache_read_tokens)
    else:
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cache_read_tokens, "audio_tokens": 0}
        if reply.cache_write_tokens:
            usage["prompt_tokens_details"]["cache_write_tokens"] = reply.cache_write_tokens
    out.append(chunk([], usage))
    out.append(sse("[DONE]"))
    return out


def gemini_chunks(reply: Reply, model: str = "gemini-2.5-flash") -> list[bytes]:
    """What Gemini's OpenAI endpoint streams: whole tool calls without `index`, carrying
    `extra_content.google.thought_signature`, `finish_reason: "stop"` even after tool calls, and
    usage on the last chunk."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        data: dict[str, Any] = {
            "choices": [{"delta": delta, "finish_reason": finish, "index": 0}],
            "created": created, "id": "gemini-fake", "model": model, "object": "chat.completion.chunk",
        }
        if usage is not None:
            data["usage"] = usage
        return sse(data)

    out = [chunk({"content": piece, "role": "assistant"}) for piece in _pieces(reply.text)]
    calls = []
    for position, call in enumerate(reply.tool_calls):
        item: dict[str, Any] = {
            "function": {"arguments": json.dumps(call.arguments), "name": call.name},
            "id": _call_id(call, position, "function-call"), "type": "function",
        }
        if call.extra_content is not None:
            item["extra_content"] = call.extra_content
        calls.append(item)
    usage = {"completion_tokens": reply.output_tokens, "prompt_tokens": reply.input_tokens,
             "total_tokens": reply.input_tokens + reply.output_tokens}
    out.append(chunk({"role": "assistant", **({"tool_calls": calls} if calls else {})}, reply.finish or "stop", usage))
    out.append(sse("[DONE]"))
    return out


# --------------------------------------------------------------------------- Anthropic


def anthropic_events(reply: Reply, model: str = "claude-test") -> list[bytes]:
    """The Messages API event sequence, `message_start` to `message_stop`, with a `ping`."""
    cached = reply.cache_read_tokens + reply.cache_write_tokens
    prompt = {"input_tokens": reply.input_tokens - cached, "cache_creation_input_tokens": reply.cache_write_tokens,
              "cache_read_input_tokens": reply.cache_read_tokens}
    first = {"input_tokens": reply.input_tokens, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0} if reply.usage_at_end else prompt
    out = [sse({"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None, "usage": {**first, "output_tokens": 1},
    }}, "message_start")]
    index = 0
    if reply.reasoning:
        out += _anthropic_thinking(index, reply.reasoning, reply.signature)
        index += 1
    if reply.redacted:
        out.append(sse({"type": "content_block_start", "index": index, "content_block": {
            "type": "redacted_thinking", "data": reply.redacted}}, "content_block_start"))
        out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    if reply.text or not reply.tool_calls:
        out += _anthropic_text(index, reply.text, ping=True)
        index += 1
    for position, call in enumerate(reply.tool_calls):
        if call.thinking:
            out += _anthropic_thinking(index, call.thinking, call.thinking_signature)
            index += 1
        if call.text:
            out += _anthropic_text(index, call.text)
            index += 1
        out.append(sse({"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": _call_id(call, position, "toolu"), "name": call.name, "input": {},
        }}, "content_block_start"))
        out += [
            sse({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}}, "content_block_delta")
            for fragment in _fragments(json.dumps(call.arguments))
        ]
        out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1
    stop = reply.finish or ("tool_use" if reply.tool_calls else "end_turn")
    last = {**prompt, "output_tokens": reply.output_tokens} if reply.usage_at_end else {"output_tokens": reply.output_tokens}
    out.append(sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": last}, "message_delta"))
    out.append(sse({"type": "message_stop"}, "message_stop"))
    return out


def _anthropic_text(index: int, text: str, *, ping: bool = False) -> list[bytes]:
    """One `text` block: its text in deltas (after a `ping`, as the API sends one early on)."""
    out = [sse({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
               "content_block_start")]
    out += [sse({"type": "ping"}, "ping")] if ping else []
    out += [
        sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
        for piece in _pieces(text)
    ]
    out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return out


def _anthropic_thinking(index: int, thinking: str, signature: str) -> list[bytes]:
    """One `thinking` block: its text in deltas, then its signature."""
    out = [sse({"type": "content_block_start", "index": index, "content_block": {
        "type": "thinking", "thinking": "", "signature": ""}}, "content_block_start")]
    out += [
        sse({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": piece}}, "content_block_delta")
        for piece in _pieces(thinking)
    ]
    out.append(sse({"type": "content_block_delta", "index": index, "delta": {
        "type": "signature_delta", "signature": signature}}, "content_block_delta"))
    out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return out


def anthropic_error_event(kind: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")


# --------------------------------------------------------------------------- Ollama


def ollama_lines(reply: Reply, model: str = "llama-test") -> list[bytes]:
    """`/api/chat` NDJSON: content pieces, a whole tool-call chunk, then the `done` line."""
    stamp = "2025-01-01T00:00:00.000000Z"

    def line(data: dict[str, Any]) -> bytes:
        return (json.dumps({"model": model, "created_at": stamp, **data}) + "\n").encode()

    out = [line({"message": {"role": "assistant", "content": piece}, "done": False}) for piece in _pieces(reply.text)]
    if reply.tool_calls:
        calls = [{"function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
        out.append(line({"message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False}))
    out.append(line({
        "message": {"role": "assistant", "content": ""}, "done_reason": reply.finish or "stop", "done": True,
        "total_duration": 1000, "load_duration": 10, "prompt_eval_count": reply.input_tokens,
        "prompt_eval_duration": 100, "eval_count": reply.output_tokens, "eval_duration": 500,
    }))
    return out


# --------------------------------------------------------------------------- the server


class FakeLLMServer:
    """One loopback server for all three dialects; scripts are consumed in order."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[Recorded] = []
        self.openai_models = ["gpt-b", "gpt-a"]
        self.anthropic_models = ["claude-test"]
        self.ollama_models = ["qwen3:8b", "llama3.1:8b"]
        self.thinking = False  # a thinking model's rules for tool-call turns (see the module)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def push(self, *scripts: Script) -> "FakeLLMServer":
        self.scripts.extend(scripts)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def start(self) -> "FakeLLMServer":
        app = web.Application(client_max_size=64 * 1024 * 1024)  # real APIs take tens of MB (images)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_post("/anthropic/v1/messages", self._anthropic)
        app.router.add_get("/anthropic/v1/models", self._anthropic_models)
        app.router.add_post("/api/chat", self._ollama)
        app.router.add_get("/api/tags", self._ollama_tags)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        self._closing.set()  # releases stalled handlers
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ handlers

    async def _record(self, request: web.Request) -> None:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body))

    def _next(self) -> Script:
        if not self.scripts:
            return Fail(500, {"error": {"message": "FakeLLMServer: no script queued", "type": "server_error"}})
        return self.scripts.pop(0)

    async def _serve(self, request: web.Request, encode: Any, content_type: str) -> web.StreamResponse:
        await self._record(request)
        script = self._next()
        if isinstance(script, Fail):
            if isinstance(script.body, (dict, list)):
                return web.json_response(script.body, status=script.status, headers=script.headers)
            return web.Response(text=script.body or "", status=script.status, headers=script.headers)
        if isinstance(script, Reply):
            script = Stream(encode(script), content_type)
        response = web.StreamResponse(headers={"Content-Type": script.content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        for n, chunk in enumerate(script.chunks):
            if script.stall_after is not None and n == script.stall_after:
                await self._closing.wait()
                return response
            if n and script.pause:
                await asyncio.sleep(script.pause)
            await response.write(chunk)
        if script.stall_after is not None and script.stall_after >= len(script.chunks):
            await self._closing.wait()
            return response
        await response.write_eof()
        return response

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        messages = (await request.json()).get("messages", []) if self.thinking else []
        if any(m.get("role") == "assistant" and m.get("tool_calls") and "reasoning_content" not in m for m in messages):
            await self._record(request)  # refused as DeepSeek's thinking mode refuses it
            return web.json_response({"error": {
                "message": "The reasoning_content in the thinking mode must be passed back to the API.",
                "type": "invalid_request_error", "param": None, "code": "invalid_request_error"}}, status=400)
        return await self._serve(request, openai_chunks, "text/event-stream")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        blocks = [b.get("type") for m in body.get("messages", []) if isinstance(m.get("content"), list)
                  for b in m["content"]]
        if not body.get("tools") and ("tool_use" in blocks or "tool_result" in blocks):
            await self._record(request)  # refused as the real API refuses it
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message":
                "Requests which include `tool_use` or `tool_result` blocks must define tools."}}, status=400)
        for n, m in enumerate(body.get("messages", [])):
            content = m.get("content") if m.get("role") == "assistant" else None
            if self.thinking and isinstance(content, list) and any(b.get("type") == "tool_use" for b in content) and (
                    content[0].get("type") not in ("thinking", "redacted_thinking")):
                await self._record(request)  # refused as extended thinking refuses it
                return web.json_response({"type": "error", "error": {"type": "invalid_request_error", "message":
                    f"messages.{n}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{content[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must "
                    "start with a thinking block."}}, status=400)
        return await self._serve(request, anthropic_events, "text/event-stream")

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, ollama_lines, "application/x-ndjson")

    async def _openai_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.openai_models
        ]})

    async def _anthropic_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in self.anthropic_models]
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"models": [
            {"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1, "digest": "0" * 64, "details": {}}
            for m in self.ollama_models
        ]})


@pytest.fixture
async def fake_llm() -> Any:
    """A started `FakeLLMServer`, closed after the test."""
    server = await FakeLLMServer().start()
    try:
        yield server
    finally:
        await server.close()


# --------------------------------------------------------------------------- test helpers


class RecordingSleep:
    """A `RetryPolicy.sleep` that records the waits instead of spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- provider test plumbing


@pytest.fixture
async def http() -> Any:
    """The providers' client session, as the service makes it, with a short read timeout."""
    from opencode_agent.core.providers.http import create_session

    session = create_session(sock_read=5)
    yield session
    await session.close()


class ReadMode:
    """How `collect` reads a stream: `task` (as any caller does) or `inline` (as the agent does,
    text going to a sink straight from the network read). Set per test by `read_mode`."""

    current = "task"


@pytest.fixture(params=("task", "inline"))
def read_mode(request: pytest.FixtureRequest) -> Any:
    """Runs a test with each reader (a dialect suite: `pytestmark = usefixtures("read_mode")`)."""
    ReadMode.current = request.param
    yield request.param
    ReadMode.current = "task"


async def read_stream(provider: Any, request: Any, mode: str) -> list[Any]:
    """Every event of one stream, in arrival order, read the `mode` way."""
    from opencode_agent.core.providers.base import TextDelta

    events: list[Any] = []

    def sink(text: str) -> bool:
        events.append(TextDelta(text))
        return True

    async for event in provider.stream(request, sink if mode == "inline" else None):
        events.append(event)
    return events


async def collect(provider: Any, request: Any) -> list[Any]:
    """Every event of one stream, read the way the current test's `read_mode` says."""
    return await read_stream(provider, request, ReadMode.current)
