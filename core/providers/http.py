"""The HTTP plumbing every wire dialect shares: the client session, retries, stream readers, errors.

- `create_session()` builds the one `aiohttp.ClientSession` the service opens at start and closes
  at stop: a connection pool as large as the number of concurrent runs, no total timeout (a
  reply may stream for minutes) but a read timeout, so a stalled stream fails instead of hanging.
- `RetryPolicy` decides whether and when to try again: on 408/409/429/5xx/529 and on connection
  errors before the first byte, honouring `retry-after-ms` then `retry-after`, with capped
  exponential backoff and jitter. A spending-limit error (OpenAI `insufficient_quota`, Anthropic
  billing errors) is never retried: waiting does not refill a wallet.
- `HttpProvider` is the base of the three dialects: it opens the request, maps every transport
  failure and error body to `ProviderError` (with the provider's own message, redacted), reads SSE
  events or NDJSON lines, and re-runs a stream that failed before it produced any event.

Every retry logs one line on `opencode.providers`. The API key is only ever put in a request
header; messages and log lines pass through a `Redactor` that knows it.
Imports protocol, errors, secrets and providers.base only.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import random
import time
from abc import abstractmethod
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import aiohttp

from ..errors import ProviderError
from ..protocol import ImagePart, ProviderProfile
from ..secrets import Redactor
from .base import ChatRequest, ImageLoader, Provider, StreamEvent

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
MAX_LINE = 16 * 1024 * 1024

# Stable `ProviderError.code`s a client can act on.
CODE_AUTH = "provider_auth"
CODE_QUOTA = "provider_quota"
CODE_RATE_LIMITED = "provider_rate_limited"
CODE_OVERLOADED = "provider_overloaded"
CODE_UNREACHABLE = "provider_unreachable"
CODE_STALLED = "provider_stalled"
CODE_BROKEN_STREAM = "provider_stream_broken"
CODE_BAD_REQUEST = "provider_bad_request"
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


@dataclass
class SseEvent:
    event: str | None
    data: str


class HttpProvider(Provider):
    """Base of the HTTP dialects: requests, retries, error mapping and stream reading.

    A subclass provides `url()`, `headers()`, `request_body()` and `parse()`; `stream()` here
    builds the body once, then runs attempts until one finishes or a failure is final.
    """

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

    # ------------------------------------------------------------------ dialect hooks

    @abstractmethod
    def url(self) -> str:
        """The streaming chat endpoint."""

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Request headers, including the credential."""

    @abstractmethod
    async def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one streaming chat request."""

    @abstractmethod
    def parse(self, response: aiohttp.ClientResponse) -> AsyncIterator[StreamEvent]:
        """Turn a 200 response into events; end with `Finish` or raise `ProviderError`."""

    # ------------------------------------------------------------------ streaming

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        body = await self.request_body(request)
        attempt = 1
        while True:
            emitted = False
            try:
                async with self.open("POST", self.url(), body) as response:
                    async with aclosing(self.parse(response)) as events:
                        async for event in events:
                            emitted = True
                            yield event
                return
            except ProviderError as exc:
                # Once an event went out the caller has seen part of a reply: never replay it.
                delay = None if emitted else self.retry.delay_for(attempt, exc)
                if delay is None:
                    raise
                self._log_retry(exc, attempt, delay)
                await self.retry.sleep(delay)
                attempt += 1

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
    async def open(self, method: str, url: str, body: dict[str, Any] | None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the response if it is a success, raise `ProviderError` if not."""
        kwargs: dict[str, Any] = {"headers": self.headers()}
        if body is not None:
            kwargs["json"] = body
        if self._timeout is not None:
            kwargs["timeout"] = self._timeout
        try:
            response = await self.http.request(method, url, **kwargs)
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

    async def lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        """The body's lines (without line endings), read as they arrive, any length up to 16 MB."""
        pending: list[bytes] = []  # pieces of the current line; each chunk is scanned only once
        size = 0
        while True:
            try:
                chunk = await response.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._transport_error(exc, started=True) from None
            if not chunk:
                break
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pending.append(chunk[start:end])
                yield b"".join(pending).rstrip(b"\r").decode("utf-8", errors="replace")
                pending, size, start = [], 0, end + 1
            if start < len(chunk):
                pending.append(chunk[start:])
                size += len(chunk) - start
                if size > MAX_LINE:
                    raise self.error("stream line too long", code=CODE_BROKEN_STREAM)
        if pending:
            yield b"".join(pending).rstrip(b"\r").decode("utf-8", errors="replace")

    async def sse(self, response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
        """Server-sent events; an event left unfinished at the end of the body is dropped."""
        event: str | None = None
        data: list[str] = []
        async for line in self.lines(response):
            if not line:
                if data:
                    yield SseEvent(event, "\n".join(data))
                event, data = None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value

    def loads(self, data: str) -> Any:
        """Parse one stream payload; corrupt data is a broken stream, never skipped silently."""
        try:
            return json.loads(data)
        except ValueError:
            raise self.error(
                f"malformed data in the stream: {data[:120]!r}", code=CODE_BROKEN_STREAM
            ) from None

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

    def _transport_error(self, exc: BaseException, *, started: bool) -> ProviderError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return self.error(f"cannot connect to {self.base_url}: timed out", retryable=not started, code=CODE_UNREACHABLE)
        if isinstance(exc, asyncio.TimeoutError):
            timeout = self._timeout or self.http.timeout
            return self.error(f"stream stalled: no data for {timeout.sock_read}s", code=CODE_STALLED)
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error)
            return self.error(f"cannot connect to {self.base_url}: {reason}", retryable=True, code=CODE_UNREACHABLE)
        if started:
            return self.error(f"connection lost mid-stream ({type(exc).__name__})", code=CODE_BROKEN_STREAM)
        # Dropped before any byte of the response arrived: safe to send again.
        return self.error(f"connection failed: {type(exc).__name__}: {exc}", retryable=True, code=CODE_UNREACHABLE)

    async def _http_error(self, response: aiohttp.ClientResponse) -> ProviderError:
        try:
            raw = await response.content.read(MAX_ERROR_BODY)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raw = b""
        text = raw.decode("utf-8", errors="replace")
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
        return base64.b64encode(data).decode("ascii"), mime or part.mime_type


def image_placeholder(part: ImagePart) -> str:
    return f"[image {part.filename} unavailable]"
