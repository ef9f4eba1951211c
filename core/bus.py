"""The event bus: one room per session, monotonic `seq`, replay from a ring then the store.

Publishing is synchronous and cheap: it numbers the event, serialises it once, appends it to the
room's ring buffer, queues it for the store and wakes the room's sender task. The sender walks
each subscriber's cursor forward through the ring, so every subscriber gets every event exactly
once and in order, and a subscriber that joins with `after_seq` is just a cursor further back.
A subscriber whose unsent bytes pass its limit, or whose cursor falls out of the ring, is dropped
as a slow consumer; it can rejoin with `after_seq`. When a requested offset can no longer be
served (older than the store keeps, or newer than the server knows), the joiner gets exactly one
`session.resync` instead.

One more room, `SESSIONS_ROOM`, carries changes to the list of sessions (`sessions.changed`,
`sessions.removed`) the same way; its events are not stored, and its snapshot is the listing.

`Bus` is the interface (a Redis Streams implementation fits behind it); `InProcessBus` is the
embedded default. Also here: the log handler turning `opencode.*` records into `log` events.
Imports protocol and store.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Awaitable, Callable, Protocol

from pydantic import BaseModel

from .protocol import SESSIONS_ROOM, UNSTORED_EVENTS, Event, model_json
from .store import Store

log = logging.getLogger("opencode.bus")

# A process can publish seqs it never commits (killed between a publish and its group commit, or
# a batch that failed). A room loaded from the store after a restart therefore starts this far
# past the last stored seq, so no seq a client may hold is ever reused for another event; a
# client whose offset falls in the gap gets a resync.
RESTART_SEQ_GAP = 1 << 20


def sessions_room_start() -> int:
    """The seq the list room (`SESSIONS_ROOM`) counts on from: microseconds since the epoch.

    Why: its events are never stored, so a restarted server cannot know how far the last process
    counted. A panel reconnecting to the new process with an offset from the old one must get a
    `sessions.state`, not the new process's own events under numbers it has seen: starting at the
    clock puts every earlier offset below the ring (or, if the clock stepped back, above the last
    seq), and either way the bus answers it with a snapshot. Below 2**53: a JavaScript number.
    """
    return int(time.time() * 1_000_000)


class Published:
    """One event for subscribers: its JSON text, serialised once, and the `Event` on demand.

    A room's ring keeps only the texts: a `str` is never scanned by the garbage collector, so a
    full ring costs no collection time, where an `Event` model (plus its dict, its fields set and
    this wrapper) made every full collection walk four objects per ring slot. The newest event's
    `Published` is made when it is published; an older one, when a subscriber catches up, and it
    parses its text back into an `Event` only if the subscriber asks for `.event` (a WebSocket
    never does).
    """

    __slots__ = ("seq", "text", "type", "frame", "_event")

    def __init__(self, event: Event | None, text: str, seq: int | None = None, type_: str | None = None) -> None:
        if event is None and seq is None:
            raise ValueError("a Published needs its event or its seq")
        self._event = event
        self.text = text
        self.seq: int = event.seq if event is not None else seq  # type: ignore[assignment]
        # The event's type when known without parsing: the newest event's (a transport may send
        # a `message.delta` at once and hold the rest briefly); None for one rebuilt from the ring.
        self.type: str | None = event.type if event is not None else type_
        # `text` as a WebSocket frame: built by the first socket that sends it, reused by the rest.
        self.frame: bytes | None = None

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = Event.model_construct(**json.loads(self.text))
        return self._event


class Subscriber(Protocol):
    """A receiver of a room's events (a WebSocket, an SSE response, an in-process waiter)."""

    is_panel: bool

    async def send(self, item: Published) -> None: ...

    def send_now(self, item: Published) -> bool:
        """Deliver `item` without waiting, if this subscriber can (a socket write that never
        blocks); False sends it the usual way, through the room's sender task."""
        ...

    def backlog(self) -> int:
        """Bytes accepted but not yet delivered; a subscriber above its limit is dropped."""
        ...

    async def drop(self, reason: str) -> None:
        """Called once when the bus gives up on this subscriber."""
        ...


SnapshotFn = Callable[[str], Awaitable[dict[str, Any]]]


# One encoder, made once: `json.dumps` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
encode_data: Callable[[Any], str] = _ENCODER.encode
# A `str` as a JSON string literal (what `_ENCODER` writes for one), for data built by hand.
encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def envelope(seq: int, session_id: str, type_: str, ts: float, data_json: str) -> str:
    """The wire envelope around already encoded data (spliced in, not encoded again)."""
    return _envelope_text(seq, encode_str(session_id), encode_str(type_), ts, data_json)


def _envelope_text(seq: int, session_json: str, type_json: str, ts: float | str, data_json: str) -> str:
    """`envelope` from pieces already encoded (the publish path caches the first two, and the
    time's text; `ts` may be that text)."""
    return f'{{"seq":{seq},"session_id":{session_json},"type":{type_json},"ts":{ts},"data":{data_json}}}'


class _MillisecondClock:
    """The time events are stamped with: wall-clock seconds to the millisecond, and its text.

    Why: `repr` of a float costs about a microsecond, as much as the rest of building an
    envelope, and under load many events share a millisecond, so the text is made once per
    millisecond. A stamp is exactly `ms / 1000`, so a replayed event (its `ts` read back from
    the store) prints the same as it did live.
    """

    __slots__ = ("_ms", "ts", "text")

    def __init__(self) -> None:
        self._ms = -1
        self.ts = 0.0
        self.text = "0.0"

    def now(self) -> float:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            self.ts = ms / 1000
            self.text = repr(self.ts)
        return self.ts


def encode(event: Event) -> str:
    return envelope(event.seq, event.session_id, event.type, event.ts, encode_data(event.data))


class Bus(ABC):
    @abstractmethod
    def publish(self, session_id: str, type_: str, data: BaseModel | dict[str, Any]) -> int:
        """Number, log and fan out one event; returns its seq."""

    def publish_json(self, session_id: str, type_: str, data_json: str) -> int:
        """`publish` of data already encoded as a JSON object (the per-token hot path)."""
        return self.publish(session_id, type_, json.loads(data_json))

    def publish_if_followed(self, session_id: str, type_: str, make: Callable[[], BaseModel]) -> None:
        """`publish` of `make()` into a room whose events are not stored (the list room), skipped
        while nobody follows the room; a bus that cannot tell just publishes."""
        self.publish(session_id, type_, make())

    @abstractmethod
    async def subscribe(self, session_id: str, sub: Subscriber, after_seq: int | None) -> None:
        """Attach `sub`: a snapshot (no offset), the missed events, or one resync; then live."""

    @abstractmethod
    def unsubscribe(self, session_id: str, sub: Subscriber) -> None: ...

    @abstractmethod
    def has_panel(self, session_id: str) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...


class _Room:
    """One session's sequence counter, ring buffer, subscribers and sender task."""

    def __init__(self, session_id: str, last_seq: int, ring_size: int) -> None:
        self.session_id = session_id
        self.session_json = encode_str(session_id)
        self.last_seq = last_seq
        # The texts of events ring_first_seq()..last_seq, oldest first (see `Published`).
        self.ring: deque[str] = deque(maxlen=ring_size)
        self.newest: Published | None = None
        self.cursors: dict[Subscriber, int] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_publish = time.time()
        # Joins reading their snapshot (the list room's): the room counts as followed meanwhile.
        self.joining = 0
        # Stored events up to this seq are gone or going (`InProcessBus._prune`).
        self.pruned_through = 0

    def ring_first_seq(self) -> int:
        # Every publish appends one text and adds one to last_seq, so the ring is contiguous.
        return self.last_seq - len(self.ring) + 1

    def events_after(self, seq: int) -> list[Published]:
        """Ring events with seq > `seq` (caller checked `seq + 1 >= ring_first_seq`)."""
        if not self.ring or seq >= self.last_seq:
            return []
        first = self.ring_first_seq()
        start = seq + 1 - first
        ring = self.ring
        n = len(ring)
        if start >= n - 8:  # the usual case: one or a few behind; deque indexing near the end is O(1)
            texts = [ring[i] for i in range(start, n)]
        else:
            texts = list(ring)[start:]
        out = [Published(None, text, first + start + k) for k, text in enumerate(texts)]
        newest = self.newest
        if newest is not None and newest.seq == out[-1].seq:
            out[-1] = newest  # shared with the other subscribers (and it has its Event already)
        return out


class InProcessBus(Bus):
    def __init__(self, store: Store, snapshot: SnapshotFn, *, ring_size: int = 4096,
                 replay_max_events: int = 20_000, max_backlog: int = 1 << 20) -> None:
        self.store = store
        self.snapshot = snapshot
        self.ring_size = ring_size
        self.replay_max_events = replay_max_events
        self.max_backlog = max_backlog
        self._rooms: dict[str, _Room] = {}
        self._type_json: dict[str, str] = {}  # event type -> its JSON string literal
        self._closed = False
        self._clock = _MillisecondClock()
        self.dropped = 0

    # ------------------------------------------------------------------ rooms

    async def open_room(self, session_id: str) -> None:
        """Load the room's last seq from the store; must run before the first publish."""
        if session_id == SESSIONS_ROOM:
            self._room(session_id)  # nothing of it is stored
        elif session_id not in self._rooms:
            # Always past the gap, even when nothing was stored: a process killed within one group
            # commit of a session's first events had handed out seqs 1, 2, … that were never saved.
            last = await self.store.last_seq(session_id) + RESTART_SEQ_GAP
            if session_id not in self._rooms:
                self._rooms[session_id] = _Room(session_id, last, self.ring_size)

    def _room(self, session_id: str) -> _Room:
        room = self._rooms.get(session_id)
        if room is None:
            # A brand-new session has no stored events; the list room has none at all.
            start = sessions_room_start() if session_id == SESSIONS_ROOM else 0
            room = self._rooms[session_id] = _Room(session_id, start, self.ring_size)
        return room

    def last_seq(self, session_id: str) -> int:
        room = self._rooms.get(session_id)
        return room.last_seq if room else 0

    def trim_idle(self, max_idle: float) -> int:
        """Empty the ring of every room nobody watches and nothing was published to for
        `max_idle` seconds: memory stays bounded by the active sessions, and a late rejoin is
        replayed from the store instead. Returns how many rooms were trimmed."""
        now = time.time()
        trimmed = 0
        for room in self._rooms.values():
            if room.ring and not room.cursors and now - room.last_publish >= max_idle:
                room.ring.clear()
                room.newest = None
                if room.task is not None:
                    room.task.cancel()
                    room.task = None
                trimmed += 1
        return trimmed

    def new_room(self, session_id: str) -> None:
        """A fresh room, counting from 1, for a session created by this process (`open_room`
        starts a stored session's room past the restart gap)."""
        self.close_room(session_id)
        self._rooms[session_id] = _Room(session_id, 0, self.ring_size)

    def close_room(self, session_id: str, *, only: object | None = None) -> None:
        """Drop the session's room; with `only`, just if it is still that room (a timer set for
        a deleted session must not close the room of a new session given the same id)."""
        room = self._rooms.get(session_id)
        if room is None or (only is not None and room is not only):
            return
        del self._rooms[session_id]
        if room.task:
            room.task.cancel()

    def room_of(self, session_id: str) -> object | None:
        """The session's room as an opaque token for `close_room(only=...)`."""
        return self._rooms.get(session_id)

    # ------------------------------------------------------------------ publish

    def publish(self, session_id: str, type_: str, data: BaseModel | dict[str, Any]) -> int:
        # A model encodes itself (pydantic's serializer, compact UTF-8 JSON like `encode_data`).
        data_json = model_json(data) if isinstance(data, BaseModel) else encode_data(data)
        seq = self.publish_json(session_id, type_, data_json)
        # Here, not per token: every reply publishes a few events through this path.
        room = self._rooms[session_id]
        if seq - room.pruned_through > 2 * self.replay_max_events and session_id != SESSIONS_ROOM:
            self._prune(room, seq)
        return seq

    def _prune(self, room: _Room, seq: int) -> None:
        """Drop the stored events no rejoin can ask for any more: one further back than
        `replay_max_events` gets a resync (`_replay_from_store`), and `last_seq` only grows.

        Why: the messages hold what was said; the event log is only there to replay a rejoining
        client's gap, yet it kept every token of every reply forever (a chat's log grew by tens of
        KB a reply). Once a session has twice the window, the older half goes, in one queued
        statement: about one DELETE per `replay_max_events` events. A room loaded after a restart
        starts past `RESTART_SEQ_GAP`, so its first prune takes everything from before."""
        room.pruned_through = seq - self.replay_max_events
        self.store.prune_events(room.session_id, room.pruned_through)

    def publish_if_followed(self, session_id: str, type_: str, make: Callable[[], BaseModel]) -> None:
        """Why: every send tells the list room that its chat moved up, and usually no panel has
        its list open, so encoding the session and keeping it in the ring would be work for no one
        on each reply. Unfollowed, the room only counts the event and empties its ring: a later
        join with an offset from before then falls behind the ring and gets a snapshot, which is
        right, as the events it missed were never kept."""
        room = self._room(session_id)
        if room.cursors or room.joining:
            self.publish(session_id, type_, make())
            return
        room.last_seq += 1
        room.ring.clear()
        room.newest = None

    def publish_json(self, session_id: str, type_: str, data_json: str) -> int:
        room = self._rooms.get(session_id) or self._room(session_id)
        seq = room.last_seq = room.last_seq + 1
        clock = self._clock
        ts = room.last_publish = clock.now()
        # The data is encoded once: the store and the envelope share it.
        if type_ not in UNSTORED_EVENTS:
            self.store.append_event(session_id, seq, type_, ts, data_json)
        type_json = self._type_json.get(type_) or self._type_json.setdefault(type_, encode_str(type_))
        text = _envelope_text(seq, room.session_json, type_json, clock.text, data_json)
        room.ring.append(text)
        # No `Event` model on the hot path: a subscriber that wants one parses the text back.
        item = room.newest = Published(None, text, seq, type_)
        if room.cursors and not self._deliver_now(room, item):
            self._ensure_sender(room)
            room.wake.set()
        return seq

    def _deliver_now(self, room: _Room, item: Published) -> bool:
        """Hand the newest event straight to every caught-up subscriber that takes it without
        waiting; True when none is left for the sender task (no task switch per event then).
        Only a subscriber whose cursor is just before `item` qualifies, so order and
        exactly-once hold; one behind, over its backlog limit, or refusing is left to the task."""
        cursors = room.cursors
        last = item.seq
        done = True
        for sub, cursor in cursors.items():
            if cursor == last - 1 and sub.backlog() <= self.max_backlog and sub.send_now(item):
                cursors[sub] = last  # a value, not a key: the dict is safe to iterate on
            else:
                done = False
        return done

    def _ensure_sender(self, room: _Room) -> None:
        if room.task is None or room.task.done():
            # The sender must not inherit a run's context (its log-capture run id, say).
            # (Created inside an empty context: `create_task(context=...)` needs Python 3.11.)
            room.task = contextvars.Context().run(
                asyncio.get_running_loop().create_task, self._send_loop(room), name=f"opencode-room-{room.session_id}"
            )

    async def _send_loop(self, room: _Room) -> None:
        cursors = room.cursors
        while not self._closed:
            room.wake.clear()
            progressed = True
            while progressed:
                progressed = False
                for sub, cursor in list(cursors.items()):
                    last = room.last_seq
                    if cursor >= last or sub not in cursors:
                        continue
                    progressed = True
                    item = room.newest
                    if cursor + 1 == last and item is not None and item.seq == last:
                        # The usual case, once per subscriber per event: just the newest event.
                        # Inlined, as it is the hot path of a fan-out.
                        if sub.backlog() > self.max_backlog:
                            await self._drop(room, sub, "stopped reading (slow consumer)")
                            continue
                        try:
                            await sub.send(item)
                        except (ConnectionError, RuntimeError) as exc:
                            await self._drop(room, sub, f"send failed: {exc}")
                            continue
                        if sub in cursors:
                            cursors[sub] = last
                    else:
                        await self._deliver(room, sub, cursor)
            await room.wake.wait()

    async def _deliver(self, room: _Room, sub: Subscriber, cursor: int) -> None:
        if cursor + 1 < room.ring_first_seq():
            await self._drop(room, sub, "fell behind the replay buffer")
            return
        for item in room.events_after(cursor):
            if sub.backlog() > self.max_backlog:
                await self._drop(room, sub, "stopped reading (slow consumer)")
                return
            try:
                await sub.send(item)
            except (ConnectionError, RuntimeError) as exc:
                await self._drop(room, sub, f"send failed: {exc}")
                return
            if sub not in room.cursors:
                return
            room.cursors[sub] = item.seq

    async def _drop(self, room: _Room, sub: Subscriber, reason: str) -> None:
        if room.cursors.pop(sub, None) is None:
            return
        self.dropped += 1
        log.info("dropped a subscriber of %s: %s", room.session_id, reason)
        try:
            await sub.drop(reason)
        except Exception:  # noqa: BLE001 - a dying socket must not stop the room
            log.debug("drop of a subscriber failed", exc_info=True)

    # ------------------------------------------------------------------ subscribe

    async def subscribe(self, session_id: str, sub: Subscriber, after_seq: int | None) -> None:
        await self.open_room(session_id)
        room = self._room(session_id)
        if after_seq is None:
            await self._attach_with_snapshot(room, sub, "session.state")
            return
        if after_seq > room.last_seq:
            # The client saw events this server never committed (e.g. before a crash).
            await self._attach_with_snapshot(room, sub, "session.resync")
            return
        cursor = after_seq
        if cursor + 1 < room.ring_first_seq():
            cursor = await self._replay_from_store(room, sub, cursor)
            if cursor is None:
                await self._attach_with_snapshot(room, sub, "session.resync")
                return
        room.cursors[sub] = cursor
        self._ensure_sender(room)
        room.wake.set()

    async def _replay_from_store(self, room: _Room, sub: Subscriber, cursor: int) -> int | None:
        """Send stored events until the ring covers the rest; None when the gap can't be filled."""
        if room.last_seq - cursor > self.replay_max_events:
            return None
        await self.store.flush()
        while cursor + 1 < room.ring_first_seq():
            need = room.ring_first_seq() - 1 - cursor
            events = await self.store.events_after(room.session_id, cursor, min(need, 1000))
            if not events or events[0].seq != cursor + 1:
                return None
            for ev in events:
                if ev.seq != cursor + 1:
                    return None
                await sub.send(Published(ev, encode(ev)))
                cursor = ev.seq
        return cursor

    async def _attach_with_snapshot(self, room: _Room, sub: Subscriber, type_: str) -> None:
        if room.session_id == SESSIONS_ROOM:
            await self._attach_with_listing(room, sub)
            return
        state = await self.snapshot(room.session_id)
        # Nothing awaited between reading `last_seq` and attaching: the snapshot covers it.
        seq = room.last_seq
        ev = Event.model_construct(seq=seq, session_id=room.session_id, type=type_, ts=round(time.time(), 3), data=state)
        room.cursors[sub] = seq
        await sub.send(Published(ev, encode(ev)))
        self._ensure_sender(room)
        room.wake.set()

    async def _attach_with_listing(self, room: _Room, sub: Subscriber) -> None:
        """The list room's snapshot, `sessions.state`, at the seq from before it was read.

        Why not the seq after, as a session's: a session's snapshot is read from memory in one
        step, but the list is read from the store, and a change published during that read may or
        may not be in it. Its events come after the snapshot instead; each carries the whole
        session (or its removal), so one the snapshot already shows changes nothing.
        """
        seq = room.last_seq
        room.joining += 1  # what is published during the read is kept for this joiner
        try:
            state = await self.snapshot(room.session_id)
            ev = Event.model_construct(seq=seq, session_id=room.session_id, type="sessions.state",
                                       ts=round(time.time(), 3), data=state)
            await sub.send(Published(ev, encode(ev)))
            room.cursors[sub] = seq  # after the send: whatever was published meanwhile follows it
        finally:
            room.joining -= 1
        self._ensure_sender(room)
        room.wake.set()

    def unsubscribe(self, session_id: str, sub: Subscriber) -> None:
        room = self._rooms.get(session_id)
        if room is not None:
            room.cursors.pop(sub, None)

    def has_panel(self, session_id: str) -> bool:
        room = self._rooms.get(session_id)
        return bool(room and any(s.is_panel for s in room.cursors))

    def subscriber_count(self, session_id: str) -> int:
        room = self._rooms.get(session_id)
        return len(room.cursors) if room else 0

    async def close(self) -> None:
        self._closed = True
        tasks = [r.task for r in self._rooms.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class QueueSubscriber:
    """An in-process subscriber (the node, the CLI, tests): events land in an asyncio.Queue."""

    is_panel = False

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.drop_reason: str | None = None

    async def send(self, item: Published) -> None:
        self.queue.put_nowait(item.event)

    def send_now(self, item: Published) -> bool:
        self.queue.put_nowait(item.event)
        return True

    def backlog(self) -> int:
        return 0

    async def drop(self, reason: str) -> None:
        self.drop_reason = reason
        self.queue.put_nowait(None)


# --------------------------------------------------------------------------- log events

# The run a log record belongs to; set by the agent loop for the duration of a run.
current_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("opencode_session", default=None)
current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("opencode_run", default=None)

_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


def log_event_json(level: str, module: str, message: str, at: float, run_id: str | None) -> str:
    """A `log` event's data, exactly `LogData`'s fields, encoded by hand (a debug line a turn
    would otherwise pay `json`'s general encoder). `message` must already be redacted."""
    run = "null" if run_id is None else encode_str(run_id)
    return (f'{{"level":{encode_str(level)},"module":{encode_str(module)},"message":{encode_str(message)},'
            f'"time":{at!r},"run_id":{run}}}')


class BusLogHandler(logging.Handler):
    """Turns `opencode.*` records made inside a run into redacted `log` events of its session."""

    def __init__(self, bus: Bus, redact: Callable[[str], str], level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.bus = bus
        self.redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        session_id = getattr(record, "session_id", None) or current_session.get()
        if not session_id or not record.name.startswith("opencode"):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # another thread: the bus belongs to the server loop
        try:
            level = _LEVELS.get(record.levelno, "error" if record.levelno > logging.ERROR else "debug")
            self.bus.publish_json(session_id, "log", log_event_json(
                level, record.name, self.redact(record.getMessage()), record.created,
                getattr(record, "run_id", None) or current_run.get()))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def debug_line(bus: Bus, redact: Callable[[str], str], logger: logging.Logger, message: str) -> None:
    """A debug line of the current run for its session's drawer, published directly.

    Why not `logger.debug`: making a `LogRecord` (it looks up the caller's frame) and passing it
    through the handlers costs about 40 us, and a turn writes two such lines, on the server's
    one loop. Below INFO nothing reaches the console, so the drawer is the line's only reader
    and this writes exactly the event `BusLogHandler` would. Honours the logger's level.
    """
    session_id = current_session.get()
    if session_id is None or not logger.isEnabledFor(logging.DEBUG):
        return
    bus.publish_json(session_id, "log", log_event_json("debug", logger.name, redact(message), time.time(),
                                                        current_run.get()))
