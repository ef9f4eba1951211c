"""Decoding a streamed response inside the network read that delivers it.

Why: the usual way to read a body (`await response.content.readany()` in a task) takes two loop
iterations a token: one in which aiohttp's protocol buffers the bytes and wakes the task, and
one in which the task decodes and relays them. Under load the loop runs in long iterations
(tens of milliseconds at a few hundred streams on two cores), so each token waits about two of
them, and the task switch is the largest cost of a token after the socket calls themselves. An
`InlineBody` instead hooks the connection's protocol for the length of one response: after
aiohttp's own `data_received` has parsed the bytes, it takes them with the public `read_nowait()`,
feeds the dialect's decoder, and hands each text delta to `on_text` right there. Only the other
events (tool calls, usage, the finish), the end of the body and failures wake the task.

The hook is an instance attribute on aiohttp's `ResponseHandler` (`data_received` and
`connection_lost`, looked up by asyncio's transports on every call); it is removed as soon as the
body ends, before anything else can use the pooled connection, and whenever the reader stops.
It is only installed on asyncio's own transports: a loop that binds the protocol's methods once
(uvloop) would never call it, so there the caller reads the body the usual way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import aiohttp

from .base import StreamEvent, TextDelta, TextSink

if TYPE_CHECKING:
    from .http import StreamDecoder

Joiner = Callable[[Iterable[StreamEvent]], Iterator[StreamEvent]]


class InlineBody:
    """The events of one response body, decoded as each network read arrives.

    `next()` waits until there is something for the task: events the sink did not take, the end
    of the body (`ended`), or a failure, which it raises after handing over the events decoded
    before it. `emitted` tells whether any event went out, to the sink or the task (a stream
    that emitted must not be retried). The task sets `holding` while it passes a batch on; text
    waits behind the batch meanwhile, so nothing reaches the sink ahead of an event before it.
    """

    __slots__ = ("ended", "emitted", "holding", "_content", "_protocol", "_feed", "_decoder", "_join", "_on_text",
                 "_touch", "_events", "_error", "_waiter", "_loop", "_received", "_lost", "_pumping", "_text_only")

    def __init__(self, response: aiohttp.ClientResponse, protocol: Any, decoder: "StreamDecoder",
                 join: Joiner, on_text: TextSink, touch: Callable[[], None]) -> None:
        self.ended = False
        self.emitted = False
        self.holding = False
        self._content = response.content
        self._protocol = protocol
        self._decoder = decoder
        self._feed = decoder.feed
        self._text_only = decoder.text_only
        self._join = join
        self._on_text = on_text
        self._touch = touch  # tells the stall watchdog that data arrived
        self._events: deque[StreamEvent] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._received = protocol.data_received
        self._lost = protocol.connection_lost
        self._pumping = False

    @classmethod
    def attach(cls, response: aiohttp.ClientResponse, decoder: "StreamDecoder", join: Joiner,
               on_text: TextSink, touch: Callable[[], None]) -> "InlineBody | None":
        """Hook the response's connection, or None when it cannot be (the caller reads as usual)."""
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        transport = getattr(protocol, "transport", None)
        if protocol is None or transport is None or not type(transport).__module__.startswith("asyncio."):
            return None
        if not hasattr(protocol, "__dict__") or "data_received" in protocol.__dict__:
            return None
        body = cls(response, protocol, decoder, join, on_text, touch)
        protocol.data_received = body._data_received
        protocol.connection_lost = body._connection_lost
        body._pump()  # what arrived with the response head
        return body

    def detach(self) -> None:
        """Give the protocol its own methods back (idempotent)."""
        attrs = self._protocol.__dict__
        if attrs.get("data_received") == self._data_received:
            del attrs["data_received"]
        if attrs.get("connection_lost") == self._connection_lost:
            del attrs["connection_lost"]

    def fail(self, error: BaseException) -> None:
        """Stop with `error` (raised by `next()` once the events before it are taken)."""
        if self._error is None and not self.ended:
            self._error = error
        self._stop()

    async def next(self) -> list[StreamEvent]:
        """The events queued for the task, waiting for some; [] once the body has ended."""
        while not self._events:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self.ended:
                return []
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        events = list(self._events)
        self._events.clear()
        return events

    # ------------------------------------------------------------------ protocol hooks

    def _data_received(self, data: bytes) -> None:
        self._received(data)
        self._pump()

    def _connection_lost(self, exc: BaseException | None) -> None:
        self._lost(exc)
        self._pump()

    def _pump(self) -> None:
        """Decode what aiohttp buffered; wake the task if it has something to do.

        Taking data can re-enter: `read_nowait()` lets aiohttp resume reading, which calls
        `data_received(b"")` to parse what it held back. A nested call returns at once; this
        one loops until the buffer stays empty, so the data is decoded once and in order.
        """
        if self.ended or self._pumping:
            return
        self._pumping = True
        content = self._content
        try:
            while not self.ended:
                chunk = content.read_nowait(-1)
                if not chunk:
                    break
                self._touch()
                self._decode(chunk)
        except Exception as exc:  # the connection failed: aiohttp put its error on the stream
            self.fail(exc)
        finally:
            self._pumping = False
        if not self.ended and content.at_eof():
            self._stop()
        elif self._events and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _decode(self, chunk: bytes) -> None:
        events = self._events
        on_text = self._on_text
        try:
            if not events and not self.holding:
                text = self._text_only(chunk)  # the usual token, without building events
                if text is not None:
                    self.emitted = True
                    if not on_text(text):
                        events.append(TextDelta(text))
                    return
            for event in self._join(self._feed(chunk)):
                self.emitted = True
                if (event.__class__ is TextDelta and not events and not self.holding
                        and on_text(event.text)):  # type: ignore[attr-defined]
                    continue
                events.append(event)
        except Exception as exc:  # a malformed stream, or the sink failed: the task raises it
            self.fail(exc)
            return
        if self._decoder.done:
            self._stop()

    def _stop(self) -> None:
        self.ended = True
        self.detach()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
