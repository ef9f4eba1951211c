"""Persistence: the `Store` interface and its SQLite implementation.

`SqliteStore` keeps one WAL database file. Writes go through a group-commit writer (a transaction
holds at most `max_rows` rows and waits at most `max_delay`; an event row waits up to
`event_delay` for more of its session's events, see `_take_batch`), so streaming never commits per
token; reads use a second connection so they never queue behind a batch. Any write failure
(locked, read-only, disk full) rolls the whole batch back and surfaces as `StoreUnavailable`; the
writer keeps going once the cause is gone.

The writer is a plain `sqlite3.Connection` owned by a dedicated one-thread executor: it is opened,
used and closed only on that thread. A batch costs one or two thread hops, not one per
statement: its statements (BEGIN IMMEDIATE and every insert, rolled back whole on failure), then
COMMIT, in the same hop for a small batch and in a second one for a large batch.
aiosqlite has no public way to run a function on its connection's thread,
hence the executor; the reader, which does one round trip a query anyway, stays on aiosqlite.
Rows go up to 32 in one INSERT statement rather than one step each (`executemany`): every step
gives the GIL away and must win it back from a busy event loop, which is what made the writer
fall behind, not SQLite.

The event log coalesces: consecutive events of one session (contiguous seqs) while their row still
waits in the queue join that row (up to `max_events_per_row`), `seq` .. `seq_end`, type `"events"`
and data a JSON array of `[ts, type, data]` joined from the already encoded texts (a single event
keeps its own type and data, `seq_end` NULL). A backlog thus grows by events per row rather than
by rows. `events_after` expands rows back into the events they hold. A seq stored twice keeps the
first row that starts at it (INSERT OR IGNORE on the unique `events_by_session` index), as before;
the bus never reuses a seq. Rows are kept in arrival order (schema v5): a commit appends them at
the table's end instead of into one B-tree leaf per streaming session.
Imports protocol, errors and migrations; never the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import aiosqlite
from pydantic import TypeAdapter

from .errors import OpencodeError, StoreUnavailable
from .migrations import NewerSchema, migrate
from .protocol import Event, Message, Session, model_json

_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]

log = logging.getLogger("opencode.store")


class Store(ABC):
    """What the core needs from persistence; a PostgreSQL implementation fits behind it."""

    # Why writes fail right now, for a person (None while they succeed).
    trouble: str | None = None

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every write queued so far is committed (or has failed)."""

    @abstractmethod
    async def recover(self) -> int:
        """Mark replies a crash left streaming (and sends it left queued) `interrupted`."""

    @abstractmethod
    async def save_session(self, session: Session) -> None: ...

    @abstractmethod
    def queue_session(self, session: Session) -> None:
        """Queue a session's row without waiting for its commit (running totals)."""

    @abstractmethod
    async def delete_session(self, session_id: str) -> None: ...

    @abstractmethod
    async def get_session(self, session_id: str) -> Session | None: ...

    @abstractmethod
    async def list_sessions(self) -> list[Session]: ...

    @abstractmethod
    async def save_message(self, message: Message) -> None:
        """Insert or update, and wait until it is committed."""

    @abstractmethod
    def queue_message(self, message: Message) -> None:
        """Queue a checkpoint of a streaming message without waiting for its commit."""

    @abstractmethod
    async def get_messages(
        self, session_id: str, *, before: str | None = None, limit: int = 50
    ) -> tuple[list[Message], bool]:
        """A page of messages, oldest first, ending just before `before`; and whether more exist."""

    @abstractmethod
    async def get_message(self, message_id: str) -> Message | None: ...

    @abstractmethod
    def append_event(self, session_id: str, seq: int, type_: str, ts: float, data_json: str) -> None:
        """Queue an event (its data already JSON) for the log: group-committed, never awaited."""

    @abstractmethod
    def prune_events(self, session_id: str, through_seq: int) -> None:
        """Queue the removal of the session's events up to `through_seq` (never awaited): the
        bus replays only the last `replay_max_events`, so older ones are never read again."""

    @abstractmethod
    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[Event]: ...

    @abstractmethod
    async def last_seq(self, session_id: str) -> int: ...

    @abstractmethod
    async def add_audit(self, row: dict[str, Any]) -> None: ...

    @abstractmethod
    async def list_audit(self, session_id: str) -> list[dict[str, Any]]: ...


# --------------------------------------------------------------------------- SQLite

T = TypeVar("T")

ROWS_PER_STATEMENT = 32  # at most 384 variables a statement (12 a message): below SQLite's old limit of 999
ONE_HOP_ROWS = 8  # batches up to this many rows are applied and committed in one writer-thread call


class _Insert:
    """A positional INSERT whose rows go up to `ROWS_PER_STATEMENT` in one statement.

    `executemany` steps once per row, and every step releases the GIL and must take it back; while
    the event loop's thread is busy, taking it back waits up to the switch interval (5 ms). One
    multi-row statement is one step. The texts for 1..ROWS_PER_STATEMENT rows stay in the writer
    connection's statement cache, so they are prepared once."""

    __slots__ = ("texts",)

    def __init__(self, head: str, row: str, tail: str = "") -> None:
        self.texts = [head + ",".join([row] * n) + tail for n in range(ROWS_PER_STATEMENT + 1)]

    def execute(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        for i in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[i:i + ROWS_PER_STATEMENT]
            db.execute(self.texts[len(chunk)], [value for row in chunk for value in row])


_UPSERT_MESSAGES = _Insert(
    "INSERT INTO messages (id, session_id, role, skill, run_id, status, parts, usage, error, created_at, updated_at,"
    " body) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    # Rows of one statement apply in order, as they would one statement each: a later row for the
    # same id updates the earlier one when it is newer.
    """
ON CONFLICT(id) DO UPDATE SET status=excluded.status, parts=excluded.parts, usage=excluded.usage,
    error=excluded.error, updated_at=excluded.updated_at, run_id=excluded.run_id, body=excluded.body
    WHERE excluded.updated_at >= messages.updated_at
""",
)
_UPSERT_SESSIONS = _Insert(
    "INSERT INTO sessions (id, body, created_at, updated_at) VALUES ",
    "(?, ?, ?, ?)",
    """
ON CONFLICT(id) DO UPDATE SET body=excluded.body, updated_at=excluded.updated_at
    WHERE excluded.updated_at >= sessions.updated_at
""",
)
class _Statements:
    """Several statements run for each row, as one write: a session's delete is one write, so a
    batch boundary can never cut it in two (half of it committed, the rest lost with a failed
    batch)."""

    __slots__ = ("texts",)

    def __init__(self, *texts: str) -> None:
        self.texts = texts

    def execute(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        for text in self.texts:
            db.executemany(text, rows)


_DELETE_SESSION = _Statements(
    "DELETE FROM events WHERE session_id=?",
    "DELETE FROM messages WHERE session_id=?",
    "DELETE FROM audit WHERE session_id=?",
    "DELETE FROM sessions WHERE id=?",
)
_INSERT_EVENTS = _Insert("INSERT OR IGNORE INTO events (session_id, seq, seq_end, type, ts, data) VALUES ",
                        "(?, ?, ?, ?, ?, ?)")
# Rows wholly at or below a seq (`seq <= ?` bounds the index range; a row of several events goes
# once its last one is old enough).
_PRUNE_EVENTS = "DELETE FROM events WHERE session_id=? AND seq<=? AND COALESCE(seq_end, seq)<=?"
_UPSERT_MESSAGE = _UPSERT_MESSAGES.texts[1]  # one row: what bench/persistence.py's raw baseline runs
_INSERT_AUDIT = """
INSERT INTO audit (session_id, run_id, request_id, skill, tool, permission_class, decision, reason, ts)
VALUES (:session_id, :run_id, :request_id, :skill, :tool, :permission_class, :decision, :reason, :ts)
"""
_MESSAGE_COLUMNS = "body, id, session_id, role, skill, run_id, status, parts, usage, error, created_at, updated_at"
# The first row to read for the events after `after_seq`: the one holding it (or the last one
# before it), since `after_seq` may fall inside a coalesced row. One range scan of `events_by_session`.
_EVENTS_AFTER = """
SELECT seq, seq_end, type, ts, data FROM events
WHERE session_id=? AND seq >= COALESCE((SELECT MAX(seq) FROM events WHERE session_id=? AND seq<=?), 0)
ORDER BY seq LIMIT ?
"""
EVENT_RUN_TYPE = "events"  # the `type` of a row holding several events
DELTA_TYPE = "message.delta"
# A delta's text key: `MessageDeltaData` encodes `text` last (checked by `_text_after` all the same).
_TEXT_KEY = '"text":'
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class _Write:
    """One queued statement; `done` is resolved when its transaction commits or fails."""

    sql: str | _Insert | _Statements
    params: tuple[Any, ...] | dict[str, Any]
    done: asyncio.Future[None] | None = None
    rows: int = 1
    attempts: int = 0  # failed commits so far (see `_retry`)


class _EventRow:
    """Queued events of one session with contiguous seqs, stored as one `events` row.

    Appended to only while it waits in the queue; its parameters are built once the batch holding
    it is taken (by then nothing appends to it any more), so an append is a list append."""

    __slots__ = ("session_id", "seq", "seq_end", "events", "attempts", "due")
    sql = _INSERT_EVENTS
    done: asyncio.Future[None] | None = None
    rows = 1

    def __init__(self, session_id: str, seq: int, type_: str, ts: float, data_json: str) -> None:
        self.session_id = session_id
        self.seq = self.seq_end = seq
        self.events = [(type_, ts, data_json)]
        self.attempts = 0
        self.due = 0.0  # (monotonic) when it stops waiting for more events (`SqliteStore._take_batch`)

    def params_with(self, type_json: dict[str, str]) -> tuple[Any, ...]:
        """The row's parameters; `type_json` caches each type's JSON text across a batch.

        A row's data is a JSON array, one item per event: `[ts, type, data]`, or `[ts, text]` for a
        `message.delta` whose data up to its text is that of the row's last full delta. A reply's
        deltas differ only in their text, so a streaming reply is stored at about a third of the
        bytes, and the writer's page writes shrink with it (schema v4, `m004_compact_deltas`)."""
        if len(self.events) == 1:
            type_, ts, data = self.events[0]
            return (self.session_id, self.seq, None, type_, ts, data)
        parts = []
        head = None  # the last full delta's data up to and including its `"text":`
        for type_, ts, data in self.events:
            if type_ == DELTA_TYPE:
                if head is not None and data.startswith(head) and _text_after(data, len(head)):
                    parts.append(f"[{ts!r},{data[len(head):-1]}]")
                    continue
                cut = data.rfind(_TEXT_KEY) + len(_TEXT_KEY)
                head = data[:cut] if cut > len(_TEXT_KEY) and _text_after(data, cut) else None
            tj = type_json.get(type_)
            if tj is None:
                tj = type_json[type_] = json.dumps(type_)
            # Joined from the encoded texts: the data is never decoded and encoded again. A
            # float's repr is valid JSON and reads back as the same float.
            parts.append(f"[{ts!r},{tj},{data}]")
        return (self.session_id, self.seq, self.seq_end, EVENT_RUN_TYPE, self.events[0][1], f"[{','.join(parts)}]")


def _text_after(data: str, start: int) -> bool:
    """Whether `data` from `start` is one JSON string and then the object's closing brace: the
    `"text":` before `start` is then the object's own last key, never one inside a value."""
    return data.endswith("}") and _JSON_STRING.fullmatch(data, start, len(data) - 1) is not None


def events_of_row(items: list[Any]) -> Iterator[tuple[float, str, Any]]:
    """(ts, type, data) of each item of a multi-event row, compact deltas made whole again."""
    delta: dict[str, Any] | None = None
    for item in items:
        if len(item) == 2:
            if delta is None:
                raise ValueError("a compact delta with no full delta before it in its row")
            ts, text = item
            data = dict(delta)
            data["text"] = text
            yield ts, DELTA_TYPE, data
            continue
        ts, type_, data = item
        if type_ == DELTA_TYPE:
            delta = data
        yield ts, type_, data


_Queued = _Write | _EventRow
# A batch that failed for a reason that may pass is tried again, RETRY_DELAYS apart (the last one
# repeating). A fault of the store as a whole (a full disk, a lock held elsewhere, permissions,
# I/O: `_store_wide`) is retried until it passes: every new send is refused meanwhile (its
# message is an awaited write), so only the replies already streaming add rows, and a person who
# frees the disk after a minute loses nothing. Any other OperationalError could be the rows
# themselves, which would block the queue for good: those rows are given up after MAX_ATTEMPTS
# (about 9 s).
MAX_ATTEMPTS = 8
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0)
# SQLite's primary result codes that say the store cannot write at all, not that a row is wrong.
_STORE_WIDE_CODES = ("SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_READONLY",
                     "SQLITE_CANTOPEN", "SQLITE_NOMEM", "SQLITE_PROTOCOL")
# The same faults by their messages, for Pythons before 3.11 (no `sqlite_errorname`).
_STORE_WIDE_TEXTS = ("disk is full", "locked", "disk i/o error", "readonly database", "unable to open",
                     "out of memory")
# A fault that persists is logged at its first failure and then every this many failures.
LOG_EVERY = 30
# `flush()`'s marker: a statement that changes nothing (a batch runs DML only, grouped by statement).
_FLUSH_MARK = "DELETE FROM sessions WHERE 0"


def _store_wide(exc: BaseException) -> bool:
    """Whether a failed commit says the store cannot write at all (retried until it passes)."""
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_STORE_WIDE_CODES)
    text = str(exc).lower()
    return any(t in text for t in _STORE_WIDE_TEXTS)


def _retryable(w: _Queued) -> bool:
    return w.done is None and (isinstance(w, _EventRow) or w.sql is _UPSERT_MESSAGES or w.sql is _UPSERT_SESSIONS)


def _session_of(w: _Queued) -> str:
    if isinstance(w, _EventRow):
        return w.session_id
    return str(w.params[1] if w.sql is _UPSERT_MESSAGES else w.params[0])


def _session_row(s: Session) -> tuple[Any, ...]:
    return (s.id, model_json(s), s.created_at, s.updated_at)


def _message_row(m: Message) -> tuple[Any, ...]:
    """A message's row: the columns a query selects or sorts by, and `body`, the whole message as
    JSON, which is what a read returns. `parts` and `usage` stay empty: they are read only from
    rows written before `body` existed (schema v2)."""
    return (m.id, m.session_id, m.role, m.skill, m.run_id, m.status, "", None, m.error, m.created_at,
            m.updated_at, model_json(m))


_MESSAGE_LIST = TypeAdapter(list[Message])


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def _messages_from_rows(rows: Iterable[Any]) -> list[Message]:
    """Rows as messages, in one validation: the rows' JSON bodies are joined into one array and
    pydantic-core reads it at once (about 30 % faster than a model per row). A row written before
    bodies existed is spliced into one from its columns (its parts and usage are JSON already,
    its times keep every digit through `repr`); joining bodies is 50 times cheaper than that."""
    texts = [
        body if body is not None else
        f'{{"id":{_encode_str(mid)},"session_id":{_encode_str(sid)},"role":{_encode_str(role)},'
        f'"skill":{_json_or_null(skill)},"run_id":{_json_or_null(run_id)},"status":{_encode_str(status)},'
        f'"parts":{parts},"usage":{usage or "null"},"error":{_json_or_null(error)},'
        f'"created_at":{created!r},"updated_at":{updated!r}}}'
        for body, mid, sid, role, skill, run_id, status, parts, usage, error, created, updated in rows
    ]
    return _MESSAGE_LIST.validate_json(f"[{','.join(texts)}]")


class SqliteStore(Store):
    """One SQLite file in WAL mode, a group-commit writer connection and a reader connection."""

    def __init__(self, path: Path, *, max_rows: int = 100, max_delay: float = 0.05,
                 max_events_per_row: int = 256, event_delay: float = 0.25, max_event_rows: int = 2000) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_delay = max_delay
        # An event row waits up to `event_delay` in the queue (other batches leave it there), so
        # a streaming session's events share a row, and pages, rather than one row a commit each
        # (see `_take_batch`); at most `max_event_rows` such rows wait.
        self.event_delay = event_delay
        self.max_event_rows = max_event_rows
        # Keeps a row (and a replay page, read whole) bounded while the writer stalls.
        self.max_events_per_row = max_events_per_row
        # Created, used and closed only on the executor's one thread (see the module docstring).
        self._writer_db: sqlite3.Connection | None = None
        self._writer: ThreadPoolExecutor | None = None
        # Held from a batch's first hop to its COMMIT: nothing else runs on the writer
        # connection inside a transaction.
        self._transaction = asyncio.Lock()
        self._reader_db: aiosqlite.Connection | None = None
        self._queue: deque[_Queued] = deque()
        # Message and session writes go ahead of queued event rows, so a send is not held behind
        # a streaming backlog; among themselves they stay in order (a message's rowid is its
        # place in the session). Upserts keep the newest `updated_at` besides.
        self._urgent: deque[_Queued] = deque()
        # Per session, its newest event row while it is still in the queue: the next event may join it.
        self._open_rows: dict[str, _EventRow] = {}
        self._queued_rows = 0
        self._queued_event_rows = 0  # of `_queued_rows`: rows of events in the normal lane
        # Queued writes someone awaits: they are committed at once, never held for max_delay.
        self._awaited = 0
        # Of those, the ones in the normal lane (a flush, a delete): every row before them goes too.
        self._awaited_behind = 0
        # The writer waits for the first event row to be due (`_gather`): nothing else is queued.
        self._events_only = False
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._close_requested = asyncio.Event()
        self.commits = 0
        self.failed_batches = 0
        self.lost_rows = 0  # queued rows given up (see MAX_ATTEMPTS), or left when closing
        # The fault the last commit failed with, for a person (`GET /opencode/health`); None
        # once a commit succeeds again. `failing_streak` counts the failures in a row.
        self.trouble: str | None = None
        self.failing_streak = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opencode-store-writer")
        try:
            self._writer_db = await self._on_writer_thread(self._open_writer)
            self._reader_db = await self._connect_reader()
        except sqlite3.DatabaseError as exc:
            await self._close_connections()
            raise self._unreadable(exc) from exc
        except NewerSchema as exc:
            await self._close_connections()
            raise OpencodeError(f"the database {self.path} is from a newer Opencode ({exc})",
                                code="database_too_new") from exc
        except BaseException:
            await self._close_connections()
            raise
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="opencode-store-writer")

    def _unreadable(self, exc: sqlite3.DatabaseError) -> OpencodeError:
        """A database that cannot be opened, as what to do about it. Why: "file is not a
        database" names neither the file nor a way out."""
        if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, full, no such directory
            return StoreUnavailable(f"cannot open the database {self.path}: {_describe_sqlite_error(exc)}")
        return OpencodeError(f"the database {self.path} cannot be read ({exc}): it is damaged or not Opencode's; "
                             "move it aside and start again (Opencode makes a new one)", code="database_unreadable")

    def _open_writer(self) -> sqlite3.Connection:
        """On the writer thread: create the file, migrate it, and keep the connection."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Room in the statement cache for every multi-row text (`_Insert`) besides the rest.
        db = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)
            for pragma in _PRAGMAS:
                db.execute(f"PRAGMA {pragma}")
        except BaseException:
            db.close()
            raise
        return db

    async def _connect_reader(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        for pragma in _PRAGMAS:
            await db.execute(f"PRAGMA {pragma}")
        return db

    async def close(self) -> None:
        self._closing = True
        self._close_requested.set()
        self._wake.set()
        self._full.set()
        if self._task:
            await self._task
            self._task = None  # from now on a write is refused (`_enqueue`), not left waiting forever
        await self._close_connections()

    async def _close_connections(self) -> None:
        reader, self._reader_db = self._reader_db, None
        if reader is not None:
            await reader.close()
        writer, self._writer_db = self._writer_db, None
        executor, self._writer = self._writer, None
        if executor is not None:
            if writer is not None:
                await asyncio.get_running_loop().run_in_executor(executor, writer.close)
            # Its one thread is idle now: joining it does not block the loop.
            executor.shutdown(wait=True)

    async def _on_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, after whatever it is running now."""
        if self._writer is None:
            raise StoreUnavailable("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(writer connection)` on its thread, between transactions (recovery, and tests
        that provoke faults)."""
        async with self._transaction:
            return await self._on_writer_thread(lambda: fn(self._require_writer()))

    # ------------------------------------------------------------------ writer

    def _enqueue(self, write: _Queued, *, urgent: bool = False) -> None:
        if self._closing and self._task is None:
            raise StoreUnavailable("the store is closed")
        (self._urgent if urgent else self._queue).append(write)
        self._queued_rows += write.rows
        if not urgent and isinstance(write, _EventRow):
            self._queued_event_rows += 1
        self._idle.clear()
        self._wake.set()
        if self._over_limits() or (urgent and self._events_only):
            self._full.set()

    def _over_limits(self) -> bool:
        """Whether the queue holds enough to commit now: `max_rows` rows other than waiting event
        rows, or `max_event_rows` of those."""
        events = self._queued_event_rows
        return self._queued_rows - events >= self.max_rows or events >= self.max_event_rows

    async def _submit(self, sql: str | _Insert | _Statements, params: tuple[Any, ...] | dict[str, Any], *,
                      urgent: bool = True) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(sql, params, done), urgent=urgent)
        self._awaited += 1
        if not urgent:
            self._awaited_behind += 1
        self._full.set()
        await done

    async def _write_loop(self) -> None:
        while True:
            if not self._queue and not self._urgent:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._over_limits() and not self._closing and not self._awaited:
                # Group commit: let more rows arrive, at most max_delay (only event rows queued:
                # until the first is due). A caller waiting on its write is not held back; writes
                # queued meanwhile share the next transaction.
                events_only = not self._urgent
                await self._gather(self._until_due() if events_only else self.max_delay)
                if events_only and self._urgent and not (self._awaited or self._closing or self._over_limits()):
                    continue  # a row came while only event rows waited: it gets its own max_delay
            batch = self._take_batch()
            if not batch:  # event rows only, none due yet (or rows came meanwhile): look again
                continue
            delay = await self._commit(batch)
            if delay and not self._closing:
                # Only `close()` cuts the wait short: new writes, awaited or not, wait with the retry.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._close_requested.wait(), delay)

    async def _gather(self, wait: float) -> None:
        """Wait `wait` seconds, or until the queue is full, something is awaited or the store
        closes (`_full`); while only event rows wait, a new urgent row also ends it (its own
        wait is `max_delay`)."""
        self._full.clear()
        self._events_only = not self._urgent
        # A timer that sets the event, not `wait_for` (a task and a timer per batch).
        timer = asyncio.get_running_loop().call_later(wait, self._full.set)
        try:
            await self._full.wait()
        finally:
            timer.cancel()
            self._events_only = False

    def _take_batch(self) -> list[_Queued]:
        """The next batch, at most `max_rows` rows: the urgent lane, then the normal lane in
        order, where event rows not due yet (younger than `event_delay`) stop it, unless what
        stands behind them must go now (a flush or a delete someone awaits), too many wait, or
        the store is closing.

        Why they wait: under load a commit comes every few milliseconds (each send and each
        reply's end awaits one), and a row taken by each holds an event or two (at 200 streams
        46,162 events took 35,912 rows, 8.9 MB). Left to wait, a session's events fill one row,
        its deltas down to their text (`_EventRow.params_with`): 4,600 rows, 5.6 MB."""
        batch: list[_Queued] = []
        rows = 0
        urgent = self._urgent
        while urgent and rows < self.max_rows:
            rows += self._taken(batch, urgent.popleft())
        lane = self._queue
        hold = not (self._closing or self._awaited_behind or self._queued_event_rows >= self.max_event_rows)
        # Rows due within the next group-commit wait go now too: rows made a few milliseconds
        # apart would otherwise come due, and be committed, one by one.
        soon = time.monotonic() + self.max_delay
        while lane and rows < self.max_rows:
            w = lane[0]
            if isinstance(w, _EventRow):
                if hold and w.due > soon:
                    break
                self._queued_event_rows -= 1
            elif w.done is not None:
                self._awaited_behind -= 1
            rows += self._taken(batch, lane.popleft())
        self._queued_rows -= rows
        return batch

    def _taken(self, batch: list[_Queued], w: _Queued) -> int:
        """`w` joins `batch`; returns its rows."""
        batch.append(w)
        if w.done is not None:
            self._awaited -= 1
        elif isinstance(w, _EventRow) and self._open_rows.get(w.session_id) is w:
            # Taken rows must not change any more. Rows left in the queue stay open: they keep
            # taking their sessions' events, so the queue grows by events per row, not by rows.
            del self._open_rows[w.session_id]
        return w.rows

    def _until_due(self) -> float:
        """Seconds until the oldest waiting event row is due (the normal lane's first)."""
        first = self._queue[0] if self._queue else None
        if not isinstance(first, _EventRow):
            return 0.001
        return max(first.due - time.monotonic(), 0.001)

    async def _commit(self, batch: list[_Queued]) -> float:
        """Commit `batch`; on failure roll it back whole and answer its awaited writes with the
        error. Returns how long to wait before the next batch: non-zero when rows of this one
        were queued again to be retried (`_retry`)."""
        db = self._writer_db
        error: BaseException | None = None
        if db is None or self._writer is None:
            error = StoreUnavailable("the store is not open")
        else:
            try:
                # A large batch takes two hops: the statements, then COMMIT (its write to the WAL
                # file). In one hop the writer thread holds the GIL through both and the loop's lag
                # p99 at 20k rows/s rose by ~0.3 ms; a second hop lets the loop run in between. A
                # small one (a reply saved, a few events) holds it briefly: one hop, one wake-up
                # of the loop fewer.
                loop = asyncio.get_running_loop()
                async with self._transaction:
                    if sum(w.rows for w in batch) <= ONE_HOP_ROWS:
                        await loop.run_in_executor(self._writer, _apply_and_commit, db, batch)
                    else:
                        await loop.run_in_executor(self._writer, _apply_batch, db, batch)
                        await loop.run_in_executor(self._writer, _end_transaction, db, True)
                self.commits += 1
                self._recovered()
            except (sqlite3.Error, ValueError) as exc:
                error = StoreUnavailable(_describe_sqlite_error(exc), details={"cause": str(exc)})
                self._failed(batch, exc, error.message)
                if isinstance(exc, sqlite3.OperationalError):  # locked, busy, full, I/O: may pass
                    return self._retry(batch, error, forever=_store_wide(exc))
        self._answer(batch, error)
        return 0.0

    def _failed(self, batch: list[_Queued], exc: BaseException, trouble: str) -> None:
        self.failed_batches += 1
        self.failing_streak += 1
        self.trouble = trouble
        # A full disk retried every 2 s would write 30 lines a minute: the first, then every LOG_EVERY.
        if self.failing_streak % LOG_EVERY == 1:
            log.error("store write failed (%d in a row), batch of %d rolled back: %s",
                      self.failing_streak, len(batch), exc)

    def _recovered(self) -> None:
        if self.failing_streak:
            log.warning("store writes succeed again after %d failed commit(s)", self.failing_streak)
        self.failing_streak = 0
        self.trouble = None

    def _answer(self, batch: list[_Queued], error: BaseException | None) -> None:
        for w in batch:
            if w.done is not None and not w.done.done():
                if error is None:
                    w.done.set_result(None)
                else:
                    w.done.set_exception(error)

    def _retry(self, batch: list[_Queued], error: BaseException, *, forever: bool) -> float:
        """Queue a failed batch's unawaited rows again, ahead of everything: event rows, and
        message and session rows, which are upserts where the newest wins, so a late one never
        undoes a newer one; all of them go before anything queued since, a session's delete
        included. An awaited write is answered with the error (its caller decides) and is not
        repeated. Returns the wait before the next try. Rows are tried `forever` (a fault of the
        whole store) or MAX_ATTEMPTS times, and once more when the store closes; then given up,
        and logged."""
        self._answer(batch, error)
        again = [w for w in batch if _retryable(w)]
        limit = 2 if self._closing else None if forever else MAX_ATTEMPTS  # closing: once more, at once
        if limit is not None:
            lost = [w for w in again if w.attempts + 1 >= limit]
            again = [w for w in again if w.attempts + 1 < limit]
            if lost:
                self.lost_rows += len(lost)
                log.error("store: gave up %d queued row(s) after %d failed commits (sessions %s)", len(lost),
                          max(w.attempts + 1 for w in lost), ", ".join(sorted({_session_of(w) for w in lost})))
        if not again:
            return 0.0
        for w in again:
            w.attempts += 1
        self._urgent.extendleft(reversed(again))
        self._queued_rows += sum(w.rows for w in again)
        self._idle.clear()
        return RETRY_DELAYS[min(again[0].attempts, len(RETRY_DELAYS)) - 1]

    async def flush(self) -> None:
        """Commit what was queued before this call. Why a marker rather than waiting for the writer
        to go idle: under steady streaming it is rarely idle, and a page read waited seconds."""
        if self._idle.is_set():
            return
        try:
            await self._submit(_FLUSH_MARK, (), urgent=False)  # behind every row queued so far
        except StoreUnavailable:
            pass  # the rows before it failed with it (and were logged): there is nothing to wait for

    # ------------------------------------------------------------------ sessions

    async def recover(self) -> int:
        """Mark what a crash left streaming `interrupted`; returns how many messages changed."""
        now = time.time()

        def update(db: sqlite3.Connection) -> int:
            left = db.execute("SELECT id, body FROM messages WHERE status IN ('streaming', 'queued')").fetchall()
            if not left:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                for message_id, body in left:
                    if body is not None:  # in Python: SQLite's JSON functions may be missing from a build
                        doc = json.loads(body)
                        doc.update(status="interrupted", updated_at=now)
                        body = json.dumps(doc, separators=(",", ":"))
                    db.execute("UPDATE messages SET status='interrupted', updated_at=?, body=? WHERE id=?",
                               (now, body, message_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return len(left)

        try:
            count = await self._on_writer(update)
        except sqlite3.Error as exc:
            raise StoreUnavailable(_describe_sqlite_error(exc)) from exc
        if count:
            log.warning("marked %d message(s) left streaming by a previous run as interrupted", count)
        return count

    async def save_session(self, session: Session) -> None:
        await self._submit(_UPSERT_SESSIONS, _session_row(session))

    def queue_session(self, session: Session) -> None:
        # In the messages' lane: a later awaited `save_session` of the same session commits after it.
        self._enqueue(_Write(_UPSERT_SESSIONS, _session_row(session)), urgent=True)

    async def delete_session(self, session_id: str) -> None:
        # Events appended from now on go in rows queued after the delete, as they did uncoalesced.
        self._open_rows.pop(session_id, None)
        # In order behind the session's queued rows, so none of them lands after the delete.
        await self._submit(_DELETE_SESSION, (session_id,), urgent=False)

    async def get_session(self, session_id: str) -> Session | None:
        rows = await self._read("SELECT body FROM sessions WHERE id=?", (session_id,))
        return Session.model_validate_json(rows[0][0]) if rows else None

    async def list_sessions(self) -> list[Session]:
        rows = await self._read("SELECT body FROM sessions ORDER BY updated_at DESC", ())
        return [Session.model_validate_json(r[0]) for r in rows]

    # ------------------------------------------------------------------ messages

    async def save_message(self, message: Message) -> None:
        await self._submit(_UPSERT_MESSAGES, _message_row(message))

    def queue_message(self, message: Message) -> None:
        # The same lane as awaited message writes: messages commit in the order they were made.
        self._enqueue(_Write(_UPSERT_MESSAGES, _message_row(message)), urgent=True)

    async def get_messages(
        self, session_id: str, *, before: str | None = None, limit: int = 50
    ) -> tuple[list[Message], bool]:
        if before:
            rows = await self._read(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id=? AND rowid < "
                "(SELECT rowid FROM messages WHERE id=? AND session_id=?) ORDER BY rowid DESC LIMIT ?",
                (session_id, before, session_id, limit + 1),
            )
        else:
            rows = await self._read(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id=? ORDER BY rowid DESC LIMIT ?",
                (session_id, limit + 1),
            )
        has_more = len(rows) > limit
        return _messages_from_rows(reversed(rows[:limit])), has_more

    async def get_message(self, message_id: str) -> Message | None:
        rows = await self._read(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id=?", (message_id,))
        return _messages_from_rows(rows)[0] if rows else None

    # ------------------------------------------------------------------ events

    def append_event(self, session_id: str, seq: int, type_: str, ts: float, data_json: str) -> None:
        row = self._open_rows.get(session_id)
        if row is not None and seq == row.seq_end + 1 and len(row.events) < self.max_events_per_row:
            # Joins a row that is still queued: no new row, so nothing counts toward max_rows.
            row.seq_end = seq
            row.events.append((type_, ts, data_json))
            return
        row = _EventRow(session_id, seq, type_, ts, data_json)
        row.due = time.monotonic() + self.event_delay
        self._enqueue(row)
        self._open_rows[session_id] = row

    def prune_events(self, session_id: str, through_seq: int) -> None:
        self._enqueue(_Write(_PRUNE_EVENTS, (session_id, through_seq, through_seq)))

    async def events_after(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        # Every row yields at least one event, except perhaps the first (it may end at after_seq).
        rows = await self._read(_EVENTS_AFTER, (session_id, session_id, after_seq, limit + 1))
        out: list[Event] = []
        last = after_seq  # rows never overlap; skipping seqs already given keeps it exactly-once
        for seq, seq_end, type_, ts, data in rows:
            if seq_end is None:
                if seq > last:
                    out.append(Event.model_construct(
                        seq=seq, session_id=session_id, type=type_, ts=ts, data=json.loads(data)))
                    last = seq
            elif seq_end > last:
                for s, (ets, etype, edata) in enumerate(events_of_row(json.loads(data)), start=seq):
                    if s > last:
                        out.append(Event.model_construct(
                            seq=s, session_id=session_id, type=etype, ts=ets, data=edata))
                        last = s
                        if len(out) >= limit:
                            break
            if len(out) >= limit:
                break
        return out

    async def last_seq(self, session_id: str) -> int:
        rows = await self._read(
            "SELECT seq, seq_end FROM events WHERE session_id=? ORDER BY seq DESC LIMIT 1", (session_id,)
        )
        if not rows:
            return 0
        seq, seq_end = rows[0]
        return int(seq_end if seq_end is not None else seq)

    # ------------------------------------------------------------------ audit

    async def add_audit(self, row: dict[str, Any]) -> None:
        await self._submit(_INSERT_AUDIT, row)

    async def list_audit(self, session_id: str) -> list[dict[str, Any]]:
        rows = await self._read(
            "SELECT run_id, request_id, skill, tool, permission_class, decision, reason, ts "
            "FROM audit WHERE session_id=? ORDER BY id",
            (session_id,),
        )
        keys = ("run_id", "request_id", "skill", "tool", "permission_class", "decision", "reason", "ts")
        return [dict(zip(keys, r)) for r in rows]

    # ------------------------------------------------------------------ helpers

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer_db is None:
            raise StoreUnavailable("the store is not open")
        return self._writer_db

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        if self._reader_db is None:
            raise StoreUnavailable("the store is not open")
        try:
            # One round trip to the reader thread (execute + fetch + close there), not three.
            return list(await self._reader_db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreUnavailable(_describe_sqlite_error(exc)) from exc


_PRAGMAS = ("synchronous=NORMAL", "busy_timeout=2000", "foreign_keys=ON")


def _apply_batch(db: sqlite3.Connection, batch: list[_Queued]) -> None:
    """On the writer thread: open the batch's transaction and run its statements; on failure
    roll it back whole and raise (`_end_transaction(db, True)` commits it)."""
    groups = _group_by_statement(batch)
    try:
        db.execute("BEGIN IMMEDIATE")
        for sql, params in groups:
            if isinstance(sql, (_Insert, _Statements)):
                sql.execute(db, params)
            else:
                db.executemany(sql, params)
    except BaseException:
        _end_transaction(db, False)
        raise


def _apply_and_commit(db: sqlite3.Connection, batch: list[_Queued]) -> None:
    """On the writer thread: a small batch, applied and committed in one call."""
    _apply_batch(db, batch)
    _end_transaction(db, True)


def _end_transaction(db: sqlite3.Connection, commit: bool) -> None:
    """On the writer thread: COMMIT (rolling back if that fails, then raising) or ROLLBACK."""
    try:
        if commit:
            db.execute("COMMIT")
            return
    except BaseException:
        _end_transaction(db, False)
        raise
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _group_by_statement(batch: list[_Queued]) -> list[tuple[str | _Insert | _Statements, list[Any]]]:
    """Consecutive writes of the same statement are run together, order preserved."""
    groups: list[tuple[str | _Insert | _Statements, list[Any]]] = []
    type_json: dict[str, str] = {}
    for w in batch:
        params = w.params_with(type_json) if isinstance(w, _EventRow) else w.params
        if groups and groups[-1][0] == w.sql:
            groups[-1][1].append(params)
        else:
            groups.append((w.sql, [params]))
    return groups


def _describe_sqlite_error(exc: BaseException) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "the database is locked by another process; close it and try again"
    if "readonly" in text or "read-only" in text:
        return "the database file is read-only; check the permissions of the Opencode data directory"
    if "full" in text:
        return "the disk holding the Opencode database is full; free some space and try again"
    return f"the database failed: {exc}"
