"""`SqliteStore` on its own, on real files: coalesced event rows and their replay, migrating a v1
database, the one-hop group-commit writer (a failed batch rolls back whole, the writer carries
on), awaited writes, and close draining the queue."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from opencode_agent.core.errors import OpencodeError, StoreUnavailable
from opencode_agent.core.migrations import MIGRATIONS, m001_initial
from opencode_agent.core.protocol import Message, PartList, Session, TextPart, Usage
from opencode_agent.core.store import EVENT_RUN_TYPE, MAX_ATTEMPTS, SqliteStore

Expected = tuple[int, str, float, dict[str, Any]]  # seq, type, ts, data


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "opencode.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


def event_rows(db: Path, session_id: str | None = None) -> list[tuple[Any, ...]]:
    """(session_id, seq, seq_end, type) of every stored row, read with a plain connection."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session_id, seq, seq_end, type FROM events ORDER BY session_id, seq").fetchall()
    return [r for r in rows if session_id is None or r[0] == session_id]


def odd_event(seq: int) -> Expected:
    """Data and timestamps that a careless join or re-encoding would change."""
    types = ("message.delta", "run.status", "tool.call", "log")
    data = {"i": seq, "text": f'"quoted" \\ back\\slash, unicode é ✓ 🎨 \n{seq}', "nested": {"a": [1, 2.5, None, True]},
            "big": 2 ** 53 + seq, "tiny": 1e-7 * seq, "empty": {}}
    return seq, types[seq % len(types)], 1_700_000_000.123456789 + seq / 3, data


def append(store: SqliteStore, session_id: str, ev: Expected) -> None:
    seq, type_, ts, data = ev
    store.append_event(session_id, seq, type_, ts, json.dumps(data, ensure_ascii=False))


def as_tuples(events: list[Any], session_id: str) -> list[Expected]:
    assert all(e.session_id == session_id for e in events)
    return [(e.seq, e.type, e.ts, e.data) for e in events]


async def check_replay(store: SqliteStore, session_id: str, expected: list[Expected]) -> None:
    """Every after_seq from 0 to the last (inside rows too), whole and in small pages."""
    assert await store.last_seq(session_id) == (expected[-1][0] if expected else 0)
    last = expected[-1][0] if expected else 0
    for after in range(0, last + 1):
        want = [e for e in expected if e[0] > after]
        assert as_tuples(await store.events_after(session_id, after, 10_000), session_id) == want
        for limit in (1, 2, 7):
            assert as_tuples(await store.events_after(session_id, after, limit), session_id) == want[:limit]


# --------------------------------------------------------------------------- coalesced rows


async def test_contiguous_queued_events_share_rows_and_replay_exactly(db_path: Path) -> None:
    store = SqliteStore(db_path, max_events_per_row=16)
    await store.open()
    try:
        expected = [odd_event(seq) for seq in range(1, 16 * 2 + 6)]
        for ev in expected:
            append(store, "ses_a", ev)
        # Merged events add no row: the queue holds one row per 16 events.
        assert store._queued_rows == 3  # noqa: SLF001
        await store.flush()
        assert event_rows(db_path) == [
            ("ses_a", 1, 16, EVENT_RUN_TYPE), ("ses_a", 17, 32, EVENT_RUN_TYPE), ("ses_a", 33, 37, EVENT_RUN_TYPE),
        ]
        await check_replay(store, "ses_a", expected)
        assert store.failed_batches == 0
    finally:
        await store.close()


async def test_a_row_holds_at_most_256_events_by_default(store: SqliteStore, db_path: Path) -> None:
    expected = [odd_event(seq) for seq in range(1, 600)]
    for ev in expected:
        append(store, "ses_a", ev)
    await store.flush()
    assert [(r[1], r[2]) for r in event_rows(db_path)] == [(1, 256), (257, 512), (513, 599)]
    assert await store.last_seq("ses_a") == 599
    for after in (0, 1, 255, 256, 257, 300, 512, 598, 599):
        want = [e for e in expected if e[0] > after]
        assert as_tuples(await store.events_after("ses_a", after, 1000), "ses_a") == want
        assert as_tuples(await store.events_after("ses_a", after, 3), "ses_a") == want[:3]


async def test_interleaved_sessions_gaps_and_single_events(store: SqliteStore, db_path: Path) -> None:
    # Seqs 6 and 13 of ses_a were ephemeral (never stored): a gap starts a new row.
    a_seqs = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 14]
    a = [odd_event(s) for s in a_seqs]
    b = [odd_event(s) for s in range(1, 9)]
    c = [odd_event(40)]
    for i in range(max(len(a), len(b))):
        if i < len(a):
            append(store, "ses_a", a[i])
        if i < len(b):
            append(store, "ses_b", b[i])
        if i == 3:
            append(store, "ses_c", c[0])
    await store.flush()
    assert event_rows(db_path) == [
        ("ses_a", 1, 5, EVENT_RUN_TYPE), ("ses_a", 7, 12, EVENT_RUN_TYPE), ("ses_a", 14, None, a[-1][1]),
        ("ses_b", 1, 8, EVENT_RUN_TYPE), ("ses_c", 40, None, c[0][1]),
    ]
    await check_replay(store, "ses_a", a)
    await check_replay(store, "ses_b", b)
    await check_replay(store, "ses_c", c)
    assert await store.events_after("ses_a", 0, 0) == []
    assert await store.events_after("ses_none", 0, 10) == [] and await store.last_seq("ses_none") == 0


def reply_events(first_seq: int) -> list[Expected]:
    """A streamed reply as the agent publishes it: its deltas differ only in their text, with a
    status and a log line among them, and texts a careless cut would break."""
    head = {"message_id": "msg_01", "run_id": "run_01", "skill": "assistant"}
    texts = ["Hel", "lo", ' "quoted", \\ back', "é ✓ 🎨\n", '"text":"x"}', ""]
    events: list[Expected] = [(first_seq, "run.status", 1_700_000_000.5, {"run": {"id": "run_01"}})]
    for i, text in enumerate(texts):
        events.append((first_seq + 1 + i, "message.delta", 1_700_000_000.501 + i / 1000, {**head, "text": text}))
    events.append((first_seq + 7, "log", 1_700_000_000.6, {"message": "turn 1: stop", "text": "x"}))
    events.append((first_seq + 8, "message.delta", 1_700_000_000.7, {**head, "text": "after the log"}))
    # Deltas whose data is not the agent's shape are stored whole and read back as they were.
    events.append((first_seq + 9, "message.delta", 1_700_000_000.8, {**head, "text": "t", "extra": "last"}))
    events.append((first_seq + 10, "message.delta", 1_700_000_000.9, {"a": {"text": "n"}, "text": "z"}))
    events.append((first_seq + 11, "message.delta", 1_700_000_001.0, {"a": {"text": "n"}, "text": "w"}))
    return events


async def test_a_reply_s_deltas_are_stored_by_their_text_and_replay_exactly(store: SqliteStore, db_path: Path) -> None:
    expected = reply_events(1)
    for seq, type_, ts, data in expected:  # encoded as the bus encodes
        store.append_event("ses_a", seq, type_, ts, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    await store.flush()
    assert event_rows(db_path) == [("ses_a", 1, 12, EVENT_RUN_TYPE)]
    with sqlite3.connect(db_path) as conn:
        (data,) = conn.execute("SELECT data FROM events").fetchone()
    items = json.loads(data)
    # After the first full delta, the next ones of the same message are [ts, text] only; a log
    # line between them does not break the run; odd shapes stay whole.
    assert [len(item) for item in items] == [3, 3, 2, 2, 2, 2, 2, 3, 2, 3, 3, 2]
    assert items[2][1] == "lo"
    await check_replay(store, "ses_a", expected)


async def test_a_row_taken_by_a_batch_is_not_appended_to(store: SqliteStore, db_path: Path) -> None:
    expected = [odd_event(s) for s in range(1, 11)]
    for ev in expected[:4]:
        append(store, "ses_a", ev)
    await store.flush()
    for ev in expected[4:]:
        append(store, "ses_a", ev)
    await store.flush()
    assert [(r[1], r[2]) for r in event_rows(db_path)] == [(1, 4), (5, 10)]
    await check_replay(store, "ses_a", expected)


async def test_under_a_backlog_rows_left_queued_keep_taking_events(db_path: Path) -> None:
    """A batch takes only `max_rows` rows; a row it leaves in the queue still grows, so a backlog
    grows by events per row, not by one row per session per batch."""
    store = SqliteStore(db_path, max_rows=2, event_delay=0)
    await store.open()
    try:
        for sid in ("ses_a", "ses_b", "ses_c"):
            append(store, sid, odd_event(1))
        batch = store._take_batch()  # noqa: SLF001 - what the writer does next, done here in step
        assert [(w.session_id, w.seq) for w in batch] == [("ses_a", 1), ("ses_b", 1)]  # type: ignore[union-attr]
        for sid in ("ses_a", "ses_c"):
            append(store, sid, odd_event(2))
        assert store._queued_rows == 2  # noqa: SLF001 - ses_a's new row; ses_c's event joined its row
        await store._commit(batch)  # noqa: SLF001
        await store.flush()
        assert [(r[0], r[1], r[2]) for r in event_rows(db_path)] == [
            ("ses_a", 1, None), ("ses_a", 2, None), ("ses_b", 1, None), ("ses_c", 1, 2)]
        await check_replay(store, "ses_a", [odd_event(1), odd_event(2)])
        await check_replay(store, "ses_c", [odd_event(1), odd_event(2)])
    finally:
        await store.close()


async def test_a_seq_stored_twice_is_ignored(store: SqliteStore) -> None:
    store.append_event("ses_a", 1, "log", 1.0, '{"v":"first"}')
    await store.flush()
    store.append_event("ses_a", 1, "log", 2.0, '{"v":"second"}')
    store.append_event("ses_a", 2, "log", 3.0, '{"v":"next"}')
    await store.flush()
    assert store.failed_batches == 0
    assert [(e.seq, e.data) for e in await store.events_after("ses_a", 0, 10)] == [(1, {"v": "first"})]


async def test_events_appended_after_a_delete_outlive_it(store: SqliteStore, db_path: Path) -> None:
    for ev in [odd_event(s) for s in (1, 2, 3)]:
        append(store, "ses_a", ev)
    deleting = asyncio.get_running_loop().create_task(store.delete_session("ses_a"))
    await asyncio.sleep(0)  # the delete is queued (a yield, not a wait for time)
    append(store, "ses_a", odd_event(4))
    await deleting
    await store.flush()
    await check_replay(store, "ses_a", [odd_event(4)])


# --------------------------------------------------------------------------- migration


def make_v1_database(path: Path, events: list[tuple[str, Expected]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        m001_initial(conn)
        conn.execute("PRAGMA user_version = 1")
        conn.executemany(
            "INSERT INTO events (session_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)",
            [(sid, seq, t, ts, json.dumps(d)) for sid, (seq, t, ts, d) in events],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_v1_database_migrates_and_reads_back(db_path: Path) -> None:
    old = [odd_event(s) for s in range(1, 6)]
    make_v1_database(db_path, [("ses_a", ev) for ev in old] + [("ses_b", odd_event(9))])
    store = SqliteStore(db_path)
    await store.open()
    try:
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
        await check_replay(store, "ses_a", old)
        await check_replay(store, "ses_b", [odd_event(9)])
        # New rows (coalesced, after a restart gap) follow the old ones.
        new = [odd_event(s) for s in range(20, 30)]
        for ev in new:
            append(store, "ses_a", ev)
        await store.flush()
        assert [(r[1], r[2]) for r in event_rows(db_path, "ses_a")] == [(1, None), (2, None), (3, None),
                                                                        (4, None), (5, None), (20, 29)]
        await check_replay(store, "ses_a", old + new)
    finally:
        await store.close()


async def test_a_v4_event_log_moves_to_arrival_order_and_replays_the_same(db_path: Path, tmp_path: Path) -> None:
    # A v4 file as the previous Opencode wrote it: rows keyed by (session_id, seq), several
    # events to a row with compact deltas, two sessions interleaved.
    first = SqliteStore(tmp_path / "scratch.sqlite3")
    await first.open()
    try:
        a = [odd_event(s) for s in range(1, 40)]
        b = [odd_event(s) for s in range(1, 7)]
        for ev_a, ev_b in zip(a, b + [None] * len(a)):
            append(first, "ses_a", ev_a)
            if ev_b is not None:
                append(first, "ses_b", ev_b)
        await first.flush()
        with sqlite3.connect(tmp_path / "scratch.sqlite3") as conn:
            rows = conn.execute("SELECT session_id, seq, seq_end, type, ts, data FROM events").fetchall()
    finally:
        await first.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for step in MIGRATIONS[:4]:
            step(conn)
        conn.execute("PRAGMA user_version = 4")
        conn.executemany("INSERT INTO events (session_id, seq, seq_end, type, ts, data) VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()

    store = SqliteStore(db_path)
    await store.open()
    try:
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
            plan = " ".join(r[-1] for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE session_id='ses_a' AND seq > 3"))
            assert "events_by_session" in plan, plan
        assert sorted(event_rows(db_path)) == sorted((r[0], r[1], r[2], r[3]) for r in rows)
        await check_replay(store, "ses_a", a)
        await check_replay(store, "ses_b", b)
        # After the move: a row starting at a stored row's seq is still ignored, a new row follows.
        store.append_event("ses_b", 1, "log", 9.0, '{"v":"again"}')
        await store.flush()
        append(store, "ses_b", odd_event(7))
        await store.flush()
        await check_replay(store, "ses_b", b + [odd_event(7)])
        assert store.failed_batches == 0
    finally:
        await store.close()


def v2_message_row(m: Message) -> tuple[Any, ...]:
    """A message as schema v2 wrote it: its parts and usage as JSON columns, no body."""
    return (m.id, m.session_id, m.role, m.skill, m.run_id, m.status, PartList.dump_json(m.parts).decode(),
            m.usage.model_dump_json() if m.usage else None, m.error, m.created_at, m.updated_at)


async def test_messages_written_before_bodies_read_back_beside_new_ones(db_path: Path) -> None:
    old = [Message(id=f"msg_old{i}", session_id="ses_a", role="assistant", skill="assistant", run_id=f"run_{i}",
                   parts=[TextPart(text=f"old \"reply\" {i} ✓")], usage=Usage(input_tokens=i, output_tokens=2),
                   status="streaming" if i == 2 else "completed", created_at=1.5 + i, updated_at=1.25 + i)
           for i in range(3)]
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    for step in MIGRATIONS[:2]:
        step(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.executemany("INSERT INTO messages (id, session_id, role, skill, run_id, status, parts, usage, error, "
                     "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [v2_message_row(m) for m in old])
    conn.execute("COMMIT")
    conn.close()
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert await store.recover() == 1  # the one a crash left streaming, body or not
        new = Message(id="msg_new", session_id="ses_a", role="user", parts=[TextPart(text="new")],
                      created_at=9.0, updated_at=9.0)
        await store.save_message(new)
        page, more = await store.get_messages("ses_a")
        assert not more and [m.id for m in page] == ["msg_old0", "msg_old1", "msg_old2", "msg_new"]
        assert page[:2] == old[:2] and page[3] == new
        assert page[2].status == "interrupted" and page[2].parts == old[2].parts
        with sqlite3.connect(db_path) as conn:
            bodies = dict(conn.execute("SELECT id, body FROM messages"))
        assert bodies["msg_old0"] is None and Message.model_validate_json(bodies["msg_new"]) == new
    finally:
        await store.close()


async def test_recovery_marks_a_bodied_message_interrupted_in_its_body_too(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    left = Message(id="msg_left", session_id="ses_a", role="assistant", parts=[TextPart(text="half a")],
                   status="streaming", created_at=1.0, updated_at=1.0)
    await store.save_message(left)
    await store.close()
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert await store.recover() == 1
        got = await store.get_message("msg_left")
        assert got is not None and got.status == "interrupted" and got.parts == left.parts
        assert got.updated_at > 1.0
    finally:
        await store.close()


async def test_a_database_newer_than_the_code_is_refused(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    store = SqliteStore(db_path)
    with pytest.raises(OpencodeError, match="is from a newer Opencode .*upgrade Opencode") as refused:
        await store.open()
    assert refused.value.code == "database_too_new"
    assert store._writer is None  # noqa: SLF001 - its thread was shut down


async def test_a_file_that_is_no_database_is_named_with_a_way_out(db_path: Path) -> None:
    db_path.write_bytes(b"a text file, not SQLite" * 100)
    store = SqliteStore(db_path)
    with pytest.raises(OpencodeError, match=f"the database {db_path} cannot be read .*move it aside") as refused:
        await store.open()
    assert refused.value.code == "database_unreadable"
    assert store._writer is None  # noqa: SLF001


# --------------------------------------------------------------------------- the writer


def message(mid: str, session_id: str = "ses_a", status: str = "completed", text: str = "hi") -> Message:
    t = time.time()
    return Message(id=mid, session_id=session_id, role="assistant", skill="echo", parts=[TextPart(text=text)],
                   status=status, created_at=t, updated_at=t)


async def test_a_large_batch_takes_two_writer_calls_a_small_one_one(store: SqliteStore, monkeypatch: Any) -> None:
    executor = store._writer  # noqa: SLF001
    assert executor is not None
    calls: list[str] = []
    submit = executor.submit

    def counting_submit(fn: Any, *args: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return submit(fn, *args)

    monkeypatch.setattr(executor, "submit", counting_submit)
    commits = store.commits
    for i in range(250):
        store.queue_message(message(f"msg_{i:04d}", text=str(i)))
        append(store, "ses_b", odd_event(i + 1))
    await store.flush()
    # 250 message rows and one event row, 100 rows a transaction: 3 batches, 2 thread hops each.
    assert store.commits - commits == 3
    assert calls == ["_apply_batch", "_end_transaction"] * 3
    page, more = await store.get_messages("ses_a", limit=1000)
    assert [m.id for m in page] == [f"msg_{i:04d}" for i in range(250)] and not more

    # A small batch (a reply saved, a few events) is applied and committed in one call.
    calls.clear()
    await store.save_message(message("msg_small", text="small"))
    assert calls == ["_apply_and_commit"]
    assert (await store.get_message("msg_small")) is not None


async def test_rows_of_one_statement_apply_in_order(store: SqliteStore) -> None:
    """Up to 32 rows share an INSERT: a later row for the same key still updates only when newer
    (messages, sessions) or is ignored (events), as one statement each would."""
    def version(mid: str, updated: float, text: str) -> Message:
        m = message(mid, text=text)
        return m.model_copy(update={"created_at": 1.0, "updated_at": updated})

    for i in range(40):  # spans two statements
        store.queue_message(version(f"msg_{i:02d}", 1.0, "v1"))
    store.queue_message(version("msg_00", 2.0, "v2"))
    store.queue_message(version("msg_00", 1.5, "stale"))
    store.queue_message(version("msg_39", 3.0, "v3"))
    store.append_event("ses_a", 5, "log", 1.0, '{"v":"first"}')
    store.append_event("ses_a", 5, "log", 2.0, '{"v":"again"}')  # not contiguous: a row of its own
    commits = store.commits
    await store.flush()
    assert store.commits == commits + 1 and store.failed_batches == 0
    page, _ = await store.get_messages("ses_a", limit=100)
    assert [m.id for m in page] == [f"msg_{i:02d}" for i in range(40)]
    texts = {m.id: m.parts[0].text for m in page}  # type: ignore[union-attr]
    assert (texts["msg_00"], texts["msg_01"], texts["msg_39"]) == ("v2", "v1", "v3")
    assert [(e.seq, e.data) for e in await store.events_after("ses_a", 0, 10)] == [(5, {"v": "first"})]


async def test_awaited_writes_are_readable_when_they_return(store: SqliteStore) -> None:
    t = time.time()
    session = Session(id="ses_a", title="first", created_at=t, updated_at=t)
    await store.save_session(session)
    assert (await store.get_session("ses_a")) == session
    await store.save_message(message("msg_1"))
    assert (await store.get_message("msg_1")).parts[0].text == "hi"  # type: ignore[union-attr]
    audit = {"session_id": "ses_a", "run_id": "run_1", "request_id": "req_1", "skill": "echo", "tool": "t",
             "permission_class": "read", "decision": "allow", "reason": "test", "ts": t}
    await store.add_audit(audit)
    assert await store.list_audit("ses_a") == [{k: v for k, v in audit.items() if k != "session_id"}]


async def test_event_rows_wait_out_other_commits_and_fill_up(db_path: Path) -> None:
    """A session's event row is not taken by the commits of awaited writes (each send and each
    reply's end awaits one): it keeps taking the session's events until it is due, then goes as
    one row, its deltas down to their text. A flush, and closing, take it at once."""
    store = SqliteStore(db_path, event_delay=30.0)
    await store.open()
    try:
        expected = reply_events(1)
        for seq, type_, ts, data in expected[:4]:
            store.append_event("ses_a", seq, type_, ts, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        await store.save_message(message("msg_1"))  # an awaited write commits at once ...
        assert await store.get_message("msg_1") is not None
        assert event_rows(db_path) == []  # ... without the events, which wait for more
        store.queue_message(message("msg_2"))  # unawaited: committed within max_delay, not event_delay
        for _ in range(500):
            if await store.get_message("msg_2") is not None:
                break
            await asyncio.sleep(0.01)
        assert await store.get_message("msg_2") is not None and event_rows(db_path) == []
        for seq, type_, ts, data in expected[4:]:
            store.append_event("ses_a", seq, type_, ts, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        await store.flush()  # what came before a flush is committed when it returns
        assert event_rows(db_path) == [("ses_a", 1, 12, EVENT_RUN_TYPE)]
        await check_replay(store, "ses_a", expected)
        store.append_event("ses_a", 13, "log", 1.0, '{"message":"last"}')
    finally:
        await store.close()  # closing commits the waiting row
    assert event_rows(db_path)[-1] == ("ses_a", 13, None, "log")


async def test_rows_made_apart_still_commit_together(db_path: Path) -> None:
    """Event rows made a few milliseconds apart come due as far apart: those due within the next
    group wait go together, and a message queued while only event rows wait gets its own group
    wait instead of a commit at once. (A probe of 20 messages and 20 event rows 5 ms apart made 31
    commits before this was fixed; 2 without any event rows.)"""
    store = SqliteStore(db_path, event_delay=0.25)
    await store.open()
    try:
        t = time.time()
        for i in range(20):
            store.queue_message(message(f"msg_{i}"))
            store.append_event(f"ses_{i % 5}", i + 1, "log", t, '{"message":"x"}')
            await asyncio.sleep(0.005)
        for _ in range(500):
            if len(event_rows(db_path)) == 20:
                break
            await asyncio.sleep(0.01)
        assert len(event_rows(db_path)) == 20 and await store.get_message("msg_19") is not None
        assert store.commits <= 8, store.commits
    finally:
        await store.close()


async def test_due_event_rows_commit_on_their_own(db_path: Path) -> None:
    store = SqliteStore(db_path, event_delay=0.05)
    await store.open()
    try:
        store.append_event("ses_a", 1, "log", 1.0, '{"message":"alone"}')
        for _ in range(500):
            if event_rows(db_path):
                break
            await asyncio.sleep(0.01)
        assert event_rows(db_path) == [("ses_a", 1, None, "log")]
    finally:
        await store.close()


async def test_a_failed_batch_rolls_back_whole_and_its_queued_rows_are_retried(store: SqliteStore, db_path: Path) -> None:
    """A lock held elsewhere (or a full disk) fails a batch whole: the awaited write gets the error
    at once; the queued rows (a reply's events and checkpoint) were lost with it, leaving a gap
    in the event log. They are now tried again, in order, once the cause goes."""
    await store._on_writer(lambda db: db.execute("PRAGMA busy_timeout=50").fetchall())  # noqa: SLF001
    append(store, "ses_a", odd_event(1))
    await store.flush()
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    held = [odd_event(s) for s in (2, 3, 4)]
    try:
        for ev in held:
            append(store, "ses_a", ev)
        store.queue_message(message("msg_kept"))
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.save_message(message("msg_1"))  # the same batch as the rows above
        assert await store.get_message("msg_kept") is None
        await asyncio.sleep(0.5)  # a few more tries fail while the lock is held
        assert store.failed_batches >= 2
    finally:
        other.execute("ROLLBACK")
        other.close()
    later = [odd_event(s) for s in (5, 6, 7)]
    for ev in later:
        append(store, "ses_a", ev)
    await asyncio.wait_for(store.save_message(message("msg_1")), 5)
    await store.flush()
    assert await store.get_message("msg_1") is not None and await store.get_message("msg_kept") is not None
    await check_replay(store, "ses_a", [odd_event(1)] + held + later)
    assert store.lost_rows == 0


async def test_a_store_wide_fault_is_retried_until_it_passes(store: SqliteStore, db_path: Path,
                                                             monkeypatch: Any, caplog: Any) -> None:
    """A full disk or a lock held elsewhere for longer than MAX_ATTEMPTS tries (a person frees
    space after a minute) loses nothing: the rows commit once it passes. Meanwhile the store
    says why it fails, and the log says so once, not at every try."""
    monkeypatch.setattr("opencode_agent.core.store.RETRY_DELAYS", (0.005,))
    await store._on_writer(lambda db: db.execute("PRAGMA busy_timeout=1").fetchall())  # noqa: SLF001
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for seq in (1, 2, 3):
            append(store, "ses_a", odd_event(seq))
        for _ in range(400):
            if store.failed_batches >= 3 * MAX_ATTEMPTS:
                break
            await asyncio.sleep(0.01)
        assert store.failed_batches >= 3 * MAX_ATTEMPTS and store.lost_rows == 0
        assert store.trouble is not None and "locked by another process" in store.trouble
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(store.flush(), 5)
    await check_replay(store, "ses_a", [odd_event(s) for s in (1, 2, 3)])
    assert store.lost_rows == 0 and store.trouble is None and store.failing_streak == 0
    failures = [r for r in caplog.records if "store write failed" in r.getMessage()]
    assert 1 <= len(failures) <= store.failed_batches // 30 + 1
    assert "store writes succeed again after" in caplog.text


async def test_rows_that_keep_failing_on_their_own_are_given_up_after_the_last_try(
        store: SqliteStore, monkeypatch: Any, caplog: Any) -> None:
    """A fault that may be the rows' own (here: their table is gone) would block the queue for
    good: those rows are given up after MAX_ATTEMPTS tries, and the rows behind them commit."""
    monkeypatch.setattr("opencode_agent.core.store.RETRY_DELAYS", (0.01,))
    await store._on_writer(lambda db: db.execute("ALTER TABLE events RENAME TO events_away"))  # noqa: SLF001
    try:
        append(store, "ses_a", odd_event(1))
        for _ in range(200):
            if store.lost_rows:
                break
            await asyncio.sleep(0.02)
    finally:
        await store._on_writer(lambda db: db.execute("ALTER TABLE events_away RENAME TO events"))  # noqa: SLF001
    assert store.lost_rows == 1 and store.failed_batches == MAX_ATTEMPTS
    assert "gave up 1 queued row(s) after 8 failed commits (sessions ses_a)" in caplog.text
    append(store, "ses_a", odd_event(2))
    await store.flush()
    await check_replay(store, "ses_a", [odd_event(2)])


async def test_a_read_only_writer_fails_the_batch_with_advice(store: SqliteStore, db_path: Path) -> None:
    real = store._writer_db  # noqa: SLF001
    uri = f"file:{db_path}?mode=ro"
    ro = await store._on_writer(lambda _: sqlite3.connect(uri, uri=True, isolation_level=None))  # noqa: SLF001
    store._writer_db = ro  # noqa: SLF001
    try:
        append(store, "ses_a", odd_event(1))
        with pytest.raises(StoreUnavailable, match="read-only") as info:
            await store.save_session(Session(id="ses_a", created_at=1.0, updated_at=1.0))
        assert info.value.details["cause"]
    finally:
        store._writer_db = real  # noqa: SLF001
        await store._on_writer_thread(ro.close)  # noqa: SLF001
    assert event_rows(db_path) == [] and await store.get_session("ses_a") is None
    await store.save_session(Session(id="ses_a", created_at=1.0, updated_at=1.0))
    assert await store.get_session("ses_a") is not None


async def test_recover_marks_streaming_replies_interrupted(store: SqliteStore) -> None:
    await store.save_message(message("msg_s", status="streaming"))
    await store.save_message(message("msg_q", status="queued"))
    await store.save_message(message("msg_c", status="completed"))
    assert await store.recover() == 2
    assert [(await store.get_message(m)).status for m in ("msg_s", "msg_q", "msg_c")] == [  # type: ignore[union-attr]
        "interrupted", "interrupted", "completed"]


async def test_close_drains_the_queue_and_stops_the_writer_thread(db_path: Path) -> None:
    store = SqliteStore(db_path, max_delay=3600)  # only a flush or close commits early
    await store.open()
    threads = [t for t in threading.enumerate() if t.name.startswith("opencode-store-writer")]
    expected = [odd_event(s) for s in range(1, 31)]
    for ev in expected:
        append(store, "ses_a", ev)
    for i in range(5):
        store.queue_message(message(f"msg_{i}"))
    await store.close()
    assert not [t for t in threads if t.is_alive()]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 5
    assert event_rows(db_path) == [("ses_a", 1, 30, EVENT_RUN_TYPE)]
    reopened = SqliteStore(db_path)
    await reopened.open()
    try:
        await check_replay(reopened, "ses_a", expected)
    finally:
        await reopened.close()
    with pytest.raises(StoreUnavailable):
        await store.get_session("ses_a")
    for late_write in (lambda: store.queue_message(message("msg_late")),
                       lambda: store.append_event("ses_a", 31, "log", 1.0, "{}")):
        with pytest.raises(StoreUnavailable, match="closed"):  # refused, not accepted and never written
            late_write()
    with pytest.raises(StoreUnavailable, match="closed"):
        await asyncio.wait_for(store.save_message(message("msg_late")), 5)


async def test_a_flush_waits_for_what_came_before_it_not_for_the_writer_to_go_idle(db_path: Path) -> None:
    """Under steady streaming the writer is rarely idle: a flush (a page read, a replay from the
    store) must still return once the rows queued before it are committed."""
    store = SqliteStore(db_path)
    await store.open()
    streaming = True

    async def publisher() -> None:  # an event every loop turn: the queue is never empty
        seq = 0
        while streaming:
            seq += 1
            store.append_event("ses_busy", seq, "message.delta", 1.0, '{"text":"x"}')
            await asyncio.sleep(0)

    busy = asyncio.ensure_future(publisher())
    try:
        await asyncio.sleep(0.05)
        store.queue_message(message("msg_before"))
        await asyncio.wait_for(store.flush(), 5)
        assert await store.get_message("msg_before") is not None
    finally:
        streaming = False
        await busy
        await store.close()


async def test_a_queued_session_row_commits_with_the_next_batch_in_order(store: SqliteStore) -> None:
    """Usage totals are queued, not awaited: the row lands with the next group commit, and an
    awaited save of the same session queued after it still wins."""
    from opencode_agent.core.protocol import Usage

    s = Session(id="ses_q", title="first", created_at=1.0, updated_at=1.0)
    await store.save_session(s)
    store.queue_session(s.model_copy(update={"usage": Usage(input_tokens=5, output_tokens=7), "updated_at": 2.0}))
    await store.flush()
    got = await store.get_session("ses_q")
    assert got is not None and got.usage.input_tokens == 5 and got.usage.output_tokens == 7
    store.queue_session(s.model_copy(update={"usage": Usage(input_tokens=9), "updated_at": 3.0}))
    await store.save_session(s.model_copy(update={"title": "renamed", "usage": Usage(input_tokens=9), "updated_at": 4.0}))
    got = await store.get_session("ses_q")
    assert got is not None and got.title == "renamed" and got.usage.input_tokens == 9 and got.updated_at == 4.0


async def test_a_session_delete_is_one_write_that_no_batch_boundary_cuts(db_path: Path) -> None:
    """A delete was four writes; with a small batch limit the first two (events, messages) could
    fail with one batch while the last (the session row) committed with the next: the delete
    answered success and left the session's messages behind."""
    store = SqliteStore(db_path, max_rows=3)
    await store.open()
    try:
        now = time.time()
        await store.save_session(Session(id="ses_a", title="t", created_at=now, updated_at=now))
        await store.save_message(message("msg_old"))
        await store._on_writer(lambda db: db.execute("PRAGMA busy_timeout=20").fetchall())  # noqa: SLF001
        other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            store.queue_message(message("msg_ckpt", status="streaming"))
            append(store, "ses_a", odd_event(1))
            deleting = asyncio.ensure_future(store.delete_session("ses_a"))
            await asyncio.sleep(0.3)  # a batch or two fail while the lock is held
        finally:
            other.execute("ROLLBACK")
            other.close()
        try:
            await asyncio.wait_for(deleting, 10)
            deleted = True
        except StoreUnavailable:
            deleted = False
        await store.flush()
        left = (await store.get_session("ses_a"), await store.get_messages("ses_a"), await store.events_after("ses_a", 0, 10))
        if deleted:
            assert left == (None, ([], False), []), left
        else:  # refused whole: the session and what it had are all still there
            assert left[0] is not None and [m.id for m in left[1][0]][:1] == ["msg_old"]
    finally:
        await store.close()


async def test_usage_stored_before_cached_counts_loads_with_them_at_zero(db_path: Path) -> None:
    """Sessions, bodied messages and v2 column rows written before `Usage` had cache counts (the
    JSON as that code wrote it) load, count 0 cached tokens, and add up with new usage."""
    old_usage = '{"input_tokens":1200,"output_tokens":300,"cost":0.0081}'
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("INSERT INTO sessions (id, body, created_at, updated_at) VALUES (?, ?, 1.0, 1.0)", (
        "ses_old", '{"id":"ses_old","title":"","skills":[],"provider":null,"model":null,"created_at":1.0,'
        f'"updated_at":1.0,"usage":{old_usage},"budget":{{"max_tokens":null,"max_cost":null}},"permissions":{{}},'
        '"last_seq":0}'))
    conn.execute("INSERT INTO messages (id, session_id, role, skill, run_id, status, parts, usage, error, created_at,"
                 " updated_at, body) VALUES (?, ?, 'assistant', 'a', 'run_1', 'completed', '', NULL, NULL, 2.0, 2.0, ?)", (
        "msg_bodied", "ses_old", '{"id":"msg_bodied","session_id":"ses_old","role":"assistant","skill":"a",'
        '"run_id":"run_1","parts":[],"status":"completed","created_at":2.0,"updated_at":2.0,'
        f'"usage":{old_usage},"error":null,"reply_to":null}}'))
    conn.execute("INSERT INTO messages (id, session_id, role, skill, run_id, status, parts, usage, error, created_at,"
                 " updated_at) VALUES ('msg_v2', 'ses_old', 'assistant', 'a', 'run_2', 'completed', '[]', ?, NULL,"
                 " 3.0, 3.0)", (old_usage,))
    conn.close()
    store = SqliteStore(db_path)
    await store.open()
    try:
        session = await store.get_session("ses_old")
        page, _ = await store.get_messages("ses_old")
        old = Usage(input_tokens=1200, output_tokens=300, cost=0.0081)
        assert session is not None and session.usage == old and [m.usage for m in page] == [old, old]
        assert (old.cache_read_tokens, old.cache_write_tokens) == (0, 0)
        new = Usage(input_tokens=1000, output_tokens=10, cache_read_tokens=900, cache_write_tokens=50, cost=0.001)
        assert session.usage + new == Usage(input_tokens=2200, output_tokens=310, cache_read_tokens=900,
                                            cache_write_tokens=50, cost=0.0091)
    finally:
        await store.close()
