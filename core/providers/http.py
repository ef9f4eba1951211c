"""The HTTP plumbing every wire dialect shares: the client session, retries, stream readers, errors.

- `create_session()` builds the one `aiohttp.ClientSession` the service opens at start and closes
  at stop: a connection pool as large as the number of concurrent runs, no total timeout (a
  reply may stream for minutes) but a read timeout, so a stalled stream fails instead of hanging.
  aiohttp's own read timeout guards a request until the response head arrives; a streamed body is
  guarded by a `_Watchdog` instead, which costs one timer per timeout period rather than one per
  network read. A request body too large for the socket buffers has a deadline of its own (the
  read timeout plus its size at `MIN_UPLOAD_RATE`), so a server that stops reading it is a stall.
- `RetryPolicy` decides whether and when to try again: on 408/409/429/5xx/529 and on connection
  errors before the first byte, honouring `retry-after-ms` then `retry-after`, with capped
  exponential backoff and jitter. A spending-limit error (OpenAI `insufficient_quota`, Anthropic
  billing errors) is never retried: waiting does not refill a wallet.
- `LineParser` and `SseParser` cut raw body chunks into lines and server-sent events, synchronously
  and incrementally: a dialect's `StreamDecoder` is fed each network read and turns it into
  events without any I/O of its own.
- `HttpProvider` is the base of the three dialects: it opens the request, maps every transport
  failure and error body (a 200 that is not the dialect's stream too) to `ProviderError` (with
  the provider's own message, redacted), feeds the body to the dialect's decoder, and re-runs a
  stream that failed before it produced any event.
  A request without tools gets the history's earlier tool calls and results as text.
  Given an `on_text` sink (the agent gives one), it hooks the connection with an `InlineBody`
  (`inline.py`), so text is relayed inside the network read that brings it and the task wakes
  only for the other events; otherwise it awaits each network read.

Every retry logs one line on `opencode.providers`. The API key is only ever put in a request
header; messages and log lines pass through a `Redactor` that knows it.
Imports protocol, errors, secrets, providers.base and providers.inline only.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import json
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping

import aiohttp

from ..errors import ProviderError
from ..images import fitted
from ..protocol import ImagePart, ProviderProfile
from ..secrets import Redactor
from ..validation import read_at_most
from .base import (
    ChatMessage, ChatRequest, ImageLoader, Provider, StreamEvent, TextDelta, TextSink, tools_as_text,
)
from .inline import InlineBody

log = logging.getLogger("opencode.providers")

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_SOCK_CONNECT = 10.0
DEFAULT_SOCK_READ = 120.0
RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, 529}) | frozenset(range(500, 600))
# Error codes and types that mean "out of money", never worth a retry.
SPENDING_LIMIT_CODES: frozenset[str] = frozenset(
    {"insufficient_quota", "billing_error", "billing_hard_limit_reached", "insufficient_credits"}
)
MAX_ERROR_BODY = 64 * 1024
# A request body larger than the transport's write buffer (64 KiB) waits for the server to take
# it in, and aiohttp's read timeout starts only once it has: such an upload gets a deadline of
# the read timeout plus its size at this rate (bytes a second; a slow uplink's, for images).
UPLOAD_GUARD_BYTES = 64 * 1024
MIN_UPLOAD_RATE = 64 * 1024
MAX_LINE = 16 * 1024 * 1024
# `json.loads` without its per-call argument checks (one stream payload per token).
_decode_json_stdlib: Callable[[str], Any] = json.JSONDecoder().decode

try:
    from orjson import loads as _orjson_loads
except ImportError:  # not installed: the standard library's decoder does it all
    _orjson_loads = None


def decode_json(data: str) -> Any:
    """One stream payload as JSON, as the standard library reads it.

    Why orjson: it parses a chat-completion chunk about three times faster, and every streamed
    token is one such parse. It refuses a few things `json` takes (lone surrogate escapes, NaN,
    numbers past a float's range); those go to `json`, which accepts them or raises its usual
    `ValueError`. One difference stays: orjson reads an integer past 64 bits as a float, a size
    no provider's counts or ids come near (tool arguments are a string, decoded by `json`).
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            pass
    return _decode_json_stdlib(data)


def decode_json_bytes(data: bytes) -> Any:
    """`decode_json` of a payload still in bytes, read as UTF-8 the way the SSE parser reads it."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(data)
        except ValueError:
            pass
    return _decode_json_stdlib(data.decode("utf-8", errors="replace"))


# Names each provider instance's encodings on the turns it sends (`HttpProvider.wire_key`).
_WIRE_KEYS = itertools.count(1)

# Stable `ProviderError.code`s a client can act on.
CODE_AUTH = "provider_auth"
CODE_QUOTA = "provider_quota"
CODE_RATE_LIMITED = "provider_rate_limited"
CODE_OVERLOADED = "provider_overloaded"
CODE_UNREACHABLE = "provider_unreachable"
CODE_STALLED = "provider_stalled"
CODE_BROKEN_STREAM = "provider_stream_broken"
CODE_BAD_REQUEST = "provider_bad_request"
CODE_CONTEXT = "provider_context_exceeded"
CODE_ERROR = "provider_error"


def create_session(
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    sock_read: float = DEFAULT_SOCK_READ,
    sock_connect: float = DEFAULT_SOCK_CONNECT,
) -> aiohttp.ClientSession:
    """The shared client session; create it inside the running loop and `await close()` it."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=sock_connect, sock_read=sock_read)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


@dataclass
class RetryPolicy:
    """How many times to try one request and how long to wait between tries.

    `sleep` is injectable so tests can record the waits instead of spending them.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    # Fraction of each backoff that is randomised (0: none, 1: full jitter).
    jitter: float = 0.5
    # A server asking for a longer wait than this is not waited for: the error goes up with
    # `retry_after` set, so the person can decide.
    max_retry_after: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "RetryPolicy":
        """Defaults, with `max_attempts` taken from a profile's `extra` when it sets one."""
        attempts = extra.get("max_attempts")
        if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 1:
            return cls(max_attempts=attempts)
        return cls()

    def delay_for(self, attempt: int, error: ProviderError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up and raise `error`."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * (1 - self.jitter * self.rng.random())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (milliseconds) first, then `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_details(body: str) -> tuple[str | None, str | None]:
    """(message, code-or-type) from any of the error bodies providers send; Nones if unknown.

    Shapes: OpenAI `{"error": {"message", "type", "code"}}`, Anthropic
    `{"type": "error", "error": {"type", "message"}}`, Ollama `{"error": "..."}`, Gemini's
    OpenAI endpoint `[{"error": {...}}]`, vLLM/Mistral `{"message", "type", "code"}`.
    """
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None, None
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return err, None
    if not isinstance(err, dict):
        return None, None
    message = err.get("message") or err.get("detail")
    code = err.get("code") if isinstance(err.get("code"), str) else None
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    # A spending-limit type (Anthropic's "billing_error", OpenAI's "insufficient_quota" type)
    # outranks any code, so it is never mistaken for a plain, retryable 429.
    if kind in SPENDING_LIMIT_CODES:
        code = kind
    status = err.get("status") if isinstance(err.get("status"), str) else None
    return (str(message) if message else None), (code or kind or status)


class LineTooLong(ValueError):
    """A line grew past the parser's limit without ending: the stream is broken."""


class LineParser:
    """Cuts a byte stream into text lines as chunks arrive, for NDJSON.

    Lines end with `\n`, `\r\n` or a lone `\r` (as SSE allows), may be any length up to
    `max_line` bytes (a longer unfinished line raises `LineTooLong`) and are decoded as UTF-8 once
    complete, so a character split across two chunks comes out whole; invalid bytes become U+FFFD.
    Each chunk is scanned for line ends once, and for `\r` by one `memchr` (it replaced the same
    check on the decoded text: a stream without `\r` costs what it did).
    """

    __slots__ = ("_pending", "_size", "_max_line", "_cr")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._pending: list[bytes] = []  # the pieces of the unfinished line
        self._size = 0
        self._max_line = max_line
        self._cr = False  # the last chunk ended with "\r": a "\n" opening this one completes it

    def feed(self, chunk: bytes) -> list[str]:
        """The lines `chunk` completes, without their line endings."""
        if self._cr or 13 in chunk:  # "\r"; an int, not b"\r": a plain memchr, 7 times faster
            chunk = self._lf_only(chunk)
        end = chunk.rfind(b"\n") + 1
        if not end:
            self._hold(chunk)
            return []
        block = chunk if end == len(chunk) else chunk[:end]
        if self._pending:
            self._pending.append(block)
            block = b"".join(self._pending)
            self._pending, self._size = [], 0
        if end < len(chunk):
            self._hold(chunk[end:])
        # One decode for all the chunk's lines: "\n" never occurs inside a UTF-8 sequence.
        lines = block.decode("utf-8", errors="replace").split("\n")
        lines.pop()  # the empty string after the last "\n"
        return lines

    def _lf_only(self, chunk: bytes) -> bytes:
        """`chunk` with each line ending as one `\n`. A `\r` that ends the chunk ends its line at
        once (the event is not held back for the next read); a `\n` opening the next chunk is
        then the rest of a `\r\n` and is dropped."""
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == 10:  # "\n"
                chunk = chunk[1:]
        if 13 in chunk:
            self._cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    def finish(self) -> list[str]:
        """The last line when the body ended without a final line ending."""
        if not self._pending:
            return []
        line = b"".join(self._pending).decode("utf-8", errors="replace")
        self._pending, self._size = [], 0
        return [line]

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._size += len(piece)
        if self._size > self._max_line:
            raise LineTooLong(f"a line longer than {self._max_line} bytes")


@dataclass(slots=True)
class SseEvent:
    event: str | None
    data: str


class SseParser:
    """Server-sent events from raw body chunks: comments, `event:` names, multi-line `data:`.

    An event is dispatched at the blank line that ends it; one left unfinished when the body
    ends is dropped (`finish()` returns nothing), as the SSE specification says. Lines follow
    `LineParser`'s rules (`\r\n` or a lone `\r`, any length up to `max_line`, UTF-8 split across
    chunks). An event whose data is empty (no `data:` line, or only empty ones) is not dispatched
    either: gateways send a bare `data:` as a keep-alive, and no dialect's payload is ever empty
    (each is JSON or `[DONE]`), so passing it on would only break the stream as malformed.
    """

    __slots__ = ("_lines", "_event", "_data")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._lines = LineParser(max_line)
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events `chunk` completes, in order."""
        data = self._data
        # A streamed token is usually one network read holding exactly one `data: ...\n\n` event:
        # take it whole when nothing is pending. Any other shape goes through the lines below.
        if (
            chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and not data
            and not self._lines._pending
            and chunk[-3] != 13  # "\r"
        ):
            event, self._event = self._event, None  # an `event:` line may have come in the last read
            if len(chunk) == 8:  # `data: ` and nothing else: a keep-alive
                return []
            return [SseEvent(event, chunk[6:-2].decode("utf-8", errors="replace"))]
        events: list[SseEvent] = []
        for line in self._lines.feed(chunk):
            if line.startswith("data:"):  # nearly every line: checked first
                data.append(line[6:] if line.startswith(" ", 5) else line[5:])
            elif not line:
                if data:
                    if data[0] or any(data):  # only empty `data:` lines: a keep-alive
                        events.append(SseEvent(self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    data = self._data = []
                self._event = None
            elif line[0] != ":":  # a line starting with ":" is a comment
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "event":
                    self._event = value
        return events

    def idle(self) -> bool:
        """Nothing pending from earlier reads: the next read starts a fresh event."""
        return not self._data and self._event is None and not self._lines._pending

    def finish(self) -> list[SseEvent]:
        """Nothing: an event not closed by a blank line before the body ended is dropped."""
        self._lines.finish()
        self._event, self._data = None, []
        return []


class StreamDecoder(ABC):
    """One response body of one dialect turned into events, fed each network read as it arrives.

    No I/O and no awaits: `HttpProvider.stream()` reads, the decoder only parses, so an event
    costs no extra async hop. `feed` and `finish` are generators, so the events a chunk completes
    before a failure still go out before the `ProviderError`.
    """

    # Set once the dialect's end marker was seen ([DONE], message_stop, done: true): reading stops.
    done: bool = False

    @abstractmethod
    def feed(self, chunk: bytes) -> Iterator[StreamEvent]:
        """The events completed by one raw chunk of the body."""

    @abstractmethod
    def finish(self) -> Iterator[StreamEvent]:
        """The closing events once the body ended or `done` was set; raise `ProviderError` if the
        stream ended too early."""

    def text_only(self, chunk: bytes) -> str | None:
        """The text of a read that holds one plain text delta and nothing else, or None.

        The inline reader's shortcut for the usual token: one parse, no event objects, no
        generators. None consumes nothing (the caller then feeds the chunk), so a dialect answers
        only for chunks whose full decoding would yield exactly that one `TextDelta`.
        """
        return None


class _Watchdog:
    """Closes a streamed response that waits `timeout` seconds for data, with one timer per period.

    aiohttp's `sock_read` moves a timer on every network read; here the reader only stores the
    time it starts waiting (`since`, None while it is busy with what it read). The timer fires at
    most once per period: it re-arms for `since + timeout` while the reader is waiting less than
    that (or later if the consumer holds the stream, which is no stall of the server's), else it
    marks the stall and closes the response, so the pending read raises at once.
    """

    __slots__ = ("since", "stalled", "clock", "on_stall", "_timeout", "_loop", "_response", "_handle")

    def __init__(self, response: aiohttp.ClientResponse, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        # The default loop's `time()` is `time.monotonic()` behind a Python call: skip the call.
        self.clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self.since: float | None = self.clock()
        self.stalled = False
        # Told of a stall after the response is closed (an inline reader has no read to fail).
        self.on_stall: Callable[[BaseException], None] | None = None
        self._timeout = timeout
        self._loop = loop
        self._response = response
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._handle = loop.call_at(self.since + timeout, self._check)

    def _check(self) -> None:
        timeout = self._timeout
        if timeout is None:
            return
        since = self.since
        now = self._loop.time()
        if since is None:
            due = now + timeout
        elif (due := since + timeout) <= now:
            self.stalled = True
            self._handle = None
            self._response.close()
            if self.on_stall is not None:
                self.on_stall(asyncio.TimeoutError())
            return
        self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        """Data arrived: the stall window starts again."""
        self.since = self.clock()

    def stop(self) -> None:
        """Cancel the timer and forget `on_stall`, which points back at the inline reader that
        points here: left set, the pair is a reference cycle that keeps the whole finished reply
        (response, decoder, run) alive until a garbage collection."""
        self.on_stall = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _joined_text(events: Iterable[StreamEvent]) -> Iterator[StreamEvent]:
    """The events of one network read, with adjacent text deltas joined into one.

    A read holds one token while the server keeps up; when the loop falls behind, the tokens that
    arrived meanwhile come in one read, and relaying them as one delta (one event, one frame per
    socket) instead of one each sheds exactly the work that put it behind. Text decoded before a
    failure in the same read still goes out, ahead of the failure.
    """
    texts: list[TextDelta] = []
    try:
        for event in events:
            if event.__class__ is TextDelta:
                texts.append(event)  # type: ignore[arg-type]
                continue
            if texts:
                yield _text_event(texts)
                texts = []
            yield event
    except Exception:
        if texts:
            yield _text_event(texts)
        raise
    if texts:
        yield _text_event(texts)


def _text_event(texts: list[TextDelta]) -> TextDelta:
    return texts[0] if len(texts) == 1 else TextDelta("".join(t.text for t in texts))


class HttpProvider(Provider):
    """Base of the HTTP dialects: requests, retries, error mapping and stream reading.

    A subclass provides `url()`, `headers()`, `request_fields()`, `wire_messages()` and
    `decoder()`; `stream()` here builds the body once (`request_bytes()`), then runs attempts
    until one finishes or a failure is final.
    """

    # The Content-Type of a streamed reply; a 200 of another type is an error (`_not_a_stream`).
    # None: the decoder reads whatever comes (NDJSON, whose lines carry errors too).
    stream_type: str | None = "text/event-stream"

    def __init__(
        self,
        profile: ProviderProfile,
        api_key: str | None,
        http: aiohttp.ClientSession,
        image_loader: ImageLoader | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(profile, api_key, http, image_loader)
        self.name = profile.name
        self.base_url = profile.base_url.rstrip("/")
        self.retry = retry or RetryPolicy.from_extra(profile.extra)
        self.redactor = Redactor([api_key])
        read = profile.extra.get("read_timeout")
        self._timeout: aiohttp.ClientTimeout | None = None
        if isinstance(read, (int, float)) and not isinstance(read, bool) and read > 0:
            self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=DEFAULT_SOCK_CONNECT, sock_read=float(read))
        # Seconds without data after which a stream is stalled: the profile's, else the session's.
        self.read_timeout: float | None = (self._timeout or http.timeout).sock_read
        # Names this provider's encodings on the turns it sends (`ChatMessage.encoded`).
        self.wire_key = f"{self.kind}#{next(_WIRE_KEYS)}"
        self.text_wire_key = f"{self.wire_key}/text"  # the same, for requests without tools
        self.min_upload_rate: float = MIN_UPLOAD_RATE

    # ------------------------------------------------------------------ dialect hooks

    @abstractmethod
    def url(self) -> str:
        """The streaming chat endpoint."""

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Request headers, including the credential."""

    @abstractmethod
    def request_fields(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one streaming chat request without its history: `messages` holds only
        what goes before the history (the system turn, in dialects that send one)."""

    @abstractmethod
    async def wire_messages(self, message: ChatMessage) -> list[dict[str, Any]]:
        """One turn of history in this dialect: none, one or several wire messages."""

    @abstractmethod
    def decoder(self) -> StreamDecoder:
        """A fresh decoder for one 200 response: its events end with `Finish` or it raises."""

    # Whether the request's last turn carries a prompt-cache breakpoint (`cache_breakpoint`).
    cache_breakpoints: bool = False

    def cache_breakpoint(self, wire: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A turn's wire messages marked as the end of a prompt to cache, in new objects: the
        turn's own (shared with its kept encoding, and with the next request, where it is no
        longer last) stay unmarked. Dialects with `cache_breakpoints` override it."""
        return wire

    def cache_marked_turns(self, messages: list[ChatMessage]) -> set[int]:
        """The indexes of the turns that carry a breakpoint (`cache_breakpoint`): the last one,
        where the dialect caches at all. Dialects may add more."""
        return {len(messages) - 1} if self.cache_breakpoints and messages else set()

    # ------------------------------------------------------------------ request body

    async def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one streaming chat request (without tools, tool turns go as text)."""
        body = self.request_fields(request)
        marked = self.cache_marked_turns(request.messages)
        for i, message in enumerate(request.messages):
            wire = await self.wire_messages(message if request.tools else tools_as_text(message))
            body["messages"].extend(self.cache_breakpoint(wire) if i in marked else wire)
        return body

    async def request_bytes(self, request: ChatRequest) -> bytes:
        """`request_body()`, encoded, with each turn's encoding kept on the turn for the next request.

        A chat re-sends its whole history with every request, and its finished turns are shared
        between runs and never change: only the new turns are converted and encoded. Turns with
        images are encoded afresh each time (their encodings are too big to keep). A turn that
        carries a cache breakpoint (`cache_marked_turns`: the last, and for Anthropic one more) is
        sent as encoded apart, marked; what is kept for it is its plain encoding: in a later
        request the turn carries no mark, and marks left on earlier turns would pile up past the
        four breakpoints a request may hold.
        """
        body = self.request_fields(request)
        messages = [json.dumps(m) for m in body.pop("messages")]
        # Without tools a turn's calls and results go as text (`tools_as_text`): its own encoding.
        tools = bool(request.tools)
        key = self.wire_key if tools else self.text_wire_key
        marked = self.cache_marked_turns(request.messages)
        for i, turn in enumerate(request.messages):
            encoded = turn.encoded.get(key)
            if encoded is None or i in marked:
                wire = await self.wire_messages(turn if tools else tools_as_text(turn))
                if encoded is None:
                    encoded = ",".join(json.dumps(m) for m in wire)
                    if not turn.has_images():
                        turn.encoded[key] = encoded
                if i in marked:
                    messages.extend(json.dumps(m) for m in self.cache_breakpoint(wire))
                    continue
            if encoded:
                messages.append(encoded)
        rest = json.dumps(body)  # never empty: it holds the model at least
        return f'{{"messages":[{",".join(messages)}],{rest[1:]}'.encode()

    # ------------------------------------------------------------------ streaming

    async def stream(self, request: ChatRequest, on_text: TextSink | None = None) -> AsyncIterator[StreamEvent]:
        body = await self.request_bytes(request)
        attempt = 1
        while True:
            emitted = False
            try:
                async with self.open("POST", self.url(), body) as response:
                    if self.stream_type is not None and response.content_type != self.stream_type and (
                            "Content-Type" in response.headers):  # none: read it as the stream it should be
                        raise await self._not_a_stream(response)
                    _stop_sock_read(response)
                    decoder = self.decoder()
                    watchdog = _Watchdog(response, self.read_timeout)
                    inline = InlineBody.attach(response, decoder, _joined_text, on_text, watchdog.touch) if on_text else None
                    try:
                        if inline is not None:
                            watchdog.on_stall = inline.fail
                            events = self._inline_events(inline, watchdog)
                        else:
                            events = self._read_events(response, decoder, watchdog)
                        async for event in events:
                            emitted = True
                            yield event
                        for event in decoder.finish():
                            emitted = True
                            yield event
                    except LineTooLong:
                        raise self.error("stream line too long", code=CODE_BROKEN_STREAM) from None
                    finally:
                        watchdog.stop()
                        if inline is not None:
                            emitted = emitted or inline.emitted
                            inline.detach()
                return
            except ProviderError as exc:
                # Once an event went out the caller has seen part of a reply: never replay it.
                delay = None if emitted else self.retry.delay_for(attempt, exc)
                if delay is None:
                    raise
                self._log_retry(exc, attempt, delay)
                await self.retry.sleep(delay)
                attempt += 1

    async def _read_events(self, response: aiohttp.ClientResponse, decoder: StreamDecoder,
                           watchdog: "_Watchdog") -> AsyncIterator[StreamEvent]:
        """The body's events read the usual way: per network read one await and two stores for
        the watchdog, then a plain loop over the events the read completed."""
        feed = decoder.feed
        read = response.content.readany
        clock = watchdog.clock
        while True:
            watchdog.since = clock()
            try:
                chunk = await read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._read_error(exc, watchdog.stalled) from None
            watchdog.since = None
            if not chunk:
                return
            for event in _joined_text(feed(chunk)):
                yield event
            if decoder.done:
                return

    async def _inline_events(self, inline: InlineBody, watchdog: "_Watchdog") -> AsyncIterator[StreamEvent]:
        """The events the inline reader left for the task (its text went to `on_text` already)."""
        clock = watchdog.clock
        while True:
            watchdog.since = clock()
            try:
                events = await inline.next()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._read_error(exc, watchdog.stalled) from None
            if not events:
                return
            watchdog.since = None  # the consumer holds the stream: no stall of the server's
            inline.holding = True
            for event in events:
                yield event
            inline.holding = False

    async def get_json(self, url: str) -> Any:
        """GET a JSON document (model lists), with the same retries as a stream's opening."""
        attempt = 1
        while True:
            try:
                async with self.open("GET", url, None) as response:
                    try:
                        return await response.json(content_type=None)
                    except ValueError:
                        raise self.error(f"invalid JSON from {url}", code=CODE_BROKEN_STREAM) from None
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        raise self._transport_error(exc, started=True) from None
            except ProviderError as exc:
                delay = self.retry.delay_for(attempt, exc)
                if delay is None:
                    raise
                self._log_retry(exc, attempt, delay)
                await self.retry.sleep(delay)
                attempt += 1

    def _log_retry(self, exc: ProviderError, attempt: int, delay: float) -> None:
        # `exc.message` already starts with the profile name and is redacted.
        log.warning("%s; retry %d/%d in %.2fs", exc.message, attempt, self.retry.max_attempts - 1, delay)

    @asynccontextmanager
    async def open(self, method: str, url: str, body: bytes | None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request (`body`: JSON); yield the response if it succeeds, raise `ProviderError` if not."""
        kwargs: dict[str, Any] = {"headers": self.headers()}
        if body is not None:
            kwargs["data"] = body
        if self._timeout is not None:
            kwargs["timeout"] = self._timeout
        request = self.http.request(method, url, **kwargs)
        try:
            if body is not None and len(body) > UPLOAD_GUARD_BYTES and self.read_timeout is not None:
                response = await self._sent_in_time(request, len(body))
            else:  # small: the transport takes it whole, so the read timeout covers what follows
                response = await request
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc, started=False) from None
        finished = False
        try:
            if response.status >= 400:
                raise await self._http_error(response)
            yield response
            finished = True
        finally:
            # A stream left half-read must not go back to the pool.
            if finished and response.content.is_eof():
                response.release()
            else:
                response.close()

    async def _sent_in_time(self, request: Awaitable[aiohttp.ClientResponse], size: int
                            ) -> aiohttp.ClientResponse:
        """`request`'s response, or a stall once its upload (and the wait for the head after it)
        outlasts the read timeout plus `size` at `min_upload_rate`: a server that stops reading
        the body would otherwise hold the run forever. One timer (on 3.11 a task too) per large
        request; a small one (most) costs a length check."""
        limit = (self.read_timeout or 0.0) + size / self.min_upload_rate
        try:
            return await asyncio.wait_for(request, limit)
        except asyncio.TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):  # aiohttp's own timeouts keep their meaning
                raise
            raise self.error(f"stream stalled: the request ({size:,} bytes) was not taken in and answered "
                             f"within {limit:.1f}s", code=CODE_STALLED) from None

    def loads(self, data: str) -> Any:
        """Parse one stream payload; corrupt data is a broken stream, never skipped silently."""
        try:
            return decode_json(data)
        except ValueError:
            raise self.malformed(data) from None

    def malformed(self, data: str) -> ProviderError:
        return self.error(f"malformed data in the stream: {data[:120]!r}", code=CODE_BROKEN_STREAM)

    # ------------------------------------------------------------------ errors

    def error(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str = CODE_ERROR,
    ) -> ProviderError:
        """A `ProviderError` prefixed with the profile name and stripped of secrets."""
        return ProviderError(
            self.redactor(f"{self.name}: {message}"),
            http_status=http_status,
            retryable=retryable,
            retry_after=retry_after,
            code=code,
        )

    def truncated(self, what: str) -> ProviderError:
        return self.error(f"the stream ended before {what}", code=CODE_BROKEN_STREAM)

    def stalled(self) -> ProviderError:
        return self.error(f"stream stalled: no data for {self.read_timeout}s", code=CODE_STALLED)

    def _read_error(self, exc: BaseException, stalled: bool) -> ProviderError:
        # The watchdog closed the response: the read fails with "connection closed", really a stall.
        return self.stalled() if stalled else self._transport_error(exc, started=True)

    def _transport_error(self, exc: BaseException, *, started: bool) -> ProviderError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return self.error(f"cannot connect to {self.base_url}: timed out", retryable=not started, code=CODE_UNREACHABLE)
        if isinstance(exc, asyncio.TimeoutError):
            return self.stalled()
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error)
            return self.error(f"cannot connect to {self.base_url}: {reason}", retryable=True, code=CODE_UNREACHABLE)
        if started:
            return self.error(f"connection lost mid-stream ({type(exc).__name__})", code=CODE_BROKEN_STREAM)
        # Dropped before any byte of the response arrived: safe to send again.
        return self.error(f"connection failed: {type(exc).__name__}: {exc}", retryable=True, code=CODE_UNREACHABLE)

    async def _not_a_stream(self, response: aiohttp.ClientResponse) -> ProviderError:
        """A 200 whose body is not the stream asked for: an error as JSON (some servers answer a
        bad model name so), a completion not streamed, a proxy's page. The provider's message
        when it gave one, else the start of what it sent; never retried."""
        text = await _error_text(response)
        message, code = error_details(text)
        if not message:
            return self.error(f"expected a stream ({self.stream_type}), got {response.content_type}: "
                              f"{text.strip()[:300]!r}", http_status=response.status, code=CODE_BROKEN_STREAM)
        suffix = f" ({code})" if code and code not in message else ""
        return self.error(f"{message}{suffix} (HTTP {response.status}, {response.content_type})",
                          http_status=response.status,
                          code=CODE_QUOTA if code in SPENDING_LIMIT_CODES else CODE_ERROR)

    async def _http_error(self, response: aiohttp.ClientResponse) -> ProviderError:
        text = await _error_text(response)
        status = response.status
        message, code = error_details(text)
        if not message:
            message = text.strip()[:300] or response.reason or "error"
        retryable = status in RETRY_STATUSES
        kind = CODE_ERROR
        if code in SPENDING_LIMIT_CODES or "credit balance" in message.lower():
            retryable, kind = False, CODE_QUOTA
        elif status in (401, 403):
            kind = CODE_AUTH
        elif status == 429:
            kind = CODE_RATE_LIMITED
        elif status == 529 or code == "overloaded_error":
            kind = CODE_OVERLOADED
        elif 400 <= status < 500 and _is_context_overflow(message, code):
            kind, message = CODE_CONTEXT, f"{message}. {CONTEXT_HINT}"
        elif 400 <= status < 500:
            kind = CODE_BAD_REQUEST
        should_retry = response.headers.get("x-should-retry")
        if kind != CODE_QUOTA and should_retry in ("true", "false"):
            retryable = should_retry == "true"
        suffix = f" ({code})" if code and code not in message else ""
        return self.error(
            f"{message}{suffix} (HTTP {status})",
            http_status=status,
            retryable=retryable,
            retry_after=parse_retry_after(response.headers),
            code=kind,
        )

    # ------------------------------------------------------------------ images

    async def image_b64(self, part: ImagePart) -> tuple[str, str] | None:
        """(base64 data, mime type) of an image, or None when it cannot be loaded."""
        if self.image_loader is None:
            return None
        try:
            data, mime = await self.image_loader(part)
        except Exception as exc:  # a missing old image must not break the whole conversation
            log.warning("%s: image %s unavailable: %s", self.name, part.filename, exc)
            return None
        # A run's output can be 32 MB: scaled down to what every provider takes (`fit_for_model`).
        data, mime = await fitted(data, mime or part.mime_type)
        return base64.b64encode(data).decode("ascii"), mime


# How servers say a request outgrew the model's context: OpenAI's and llama.cpp's codes, and the
# wording of Anthropic ("prompt is too long"), vLLM ("maximum context length"), Ollama, LM Studio.
CONTEXT_OVERFLOW_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_CONTEXT_OVERFLOW_WORDS = re.compile(
    r"prompt is too long|context length|context window|context size|maximum context|too many tokens", re.I)
CONTEXT_HINT = ("The chat is longer than this model takes: declare the model's real context_tokens in the "
                "provider's models, so that Opencode trims the history to it, or shorten the message")


def _is_context_overflow(message: str, code: str | None) -> bool:
    """Whether a 4xx error says the request was longer than the model's context."""
    return code in CONTEXT_OVERFLOW_CODES or _CONTEXT_OVERFLOW_WORDS.search(message) is not None


async def _error_text(response: aiohttp.ClientResponse) -> str:
    """The start of an error body (`MAX_ERROR_BODY` bytes at most), "" if it cannot be read."""
    try:
        raw = await read_at_most(response.content, MAX_ERROR_BODY)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raw = b""
    return raw.decode("utf-8", errors="replace")


def _stop_sock_read(response: aiohttp.ClientResponse) -> None:
    """Switch aiohttp's `sock_read` off once a streamed response's head is in.

    It moves a timer on every network read; the `_Watchdog` guards the body instead. It stays on
    until the head arrives because it starts when the request body is fully sent, a moment only
    aiohttp sees (a large image upload must not count as a stall). A timer it already set is
    cancelled by the next read, or fires as the same stall the watchdog would report.
    """
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is not None:
        protocol.read_timeout = None


def image_placeholder(part: ImagePart) -> str:
    return f"[image {part.filename} unavailable]"
