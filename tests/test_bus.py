"""The in-process bus on its own: numbering, inline delivery to caught-up subscribers, and the
sender task for the rest, with every subscriber getting every event once and in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pathlib import Path
from typing import AsyncIterator

import pytest

from opencode_agent.core.bus import InProcessBus, Published
from opencode_agent.core.store import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "opencode.sqlite")
    await s.open()
    yield s
    await s.close()


class RecordingSubscriber:
    """Takes events inline (`send_now`) unless told not to, and records how each one came."""

    is_panel = False

    def __init__(self, *, inline: bool = True, gate: asyncio.Event | None = None) -> None:
        self.inline = inline
        self.gate = gate
        self.seqs: list[int] = []
        self.how: list[str] = []

    def send_now(self, item: Published) -> bool:
        if not self.inline:
            return False
        self.seqs.append(json.loads(item.text)["seq"])
        self.how.append("inline")
        return True

    async def send(self, item: Published) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seqs.append(json.loads(item.text)["seq"])
        self.how.append("task")

    def backlog(self) -> int:
        return 0

    async def drop(self, reason: str) -> None:
        raise AssertionError(f"dropped: {reason}")


async def _snapshot(session_id: str) -> dict[str, Any]:
    return {"session_id": session_id}


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_caught_up_subscriber_gets_events_inline_and_a_refusing_one_through_the_task(
        store: SqliteStore) -> None:
    bus = InProcessBus(store, _snapshot)
    fast, slow = RecordingSubscriber(), RecordingSubscriber(inline=False)
    bus.new_room("ses_a")  # a session this process created
    await bus.subscribe("ses_a", fast, after_seq=0)
    await bus.subscribe("ses_a", slow, after_seq=0)
    await _settle()
    for i in range(50):
        bus.publish_json("ses_a", "message.delta", json.dumps({"message_id": "m", "text": str(i)}))
    assert fast.seqs == list(range(1, 51)) and set(fast.how) == {"inline"}
    await _settle()
    assert slow.seqs == list(range(1, 51)) and set(slow.how) == {"task"}
    await store.flush()
    assert [e.seq for e in await store.events_after("ses_a", 0, 100)] == list(range(1, 51))
    await bus.close()


async def test_a_subscriber_busy_in_the_task_is_not_overtaken_by_inline_delivery(store: SqliteStore) -> None:
    """While the task is still sending an older event, newer ones queue behind it, never inline."""
    bus = InProcessBus(store, _snapshot)
    gate = asyncio.Event()
    sub = RecordingSubscriber(inline=False, gate=gate)
    bus.new_room("ses_b")  # a session this process created
    await bus.subscribe("ses_b", sub, after_seq=0)
    bus.publish_json("ses_b", "log", "{}")  # goes to the task, which waits on the gate
    await _settle()
    sub.inline = True  # from now on it would take events inline, if it were caught up
    for _ in range(10):
        bus.publish_json("ses_b", "log", "{}")
    assert sub.seqs == []  # nothing overtook the event stuck in the task
    gate.set()
    await _settle()
    assert sub.seqs == list(range(1, 12))
    assert sub.how[0] == "task"
    # Caught up again: the next event goes inline.
    bus.publish_json("ses_b", "log", "{}")
    assert sub.seqs[-1] == 12 and sub.how[-1] == "inline"
    await bus.close()


class KeepingSubscriber(RecordingSubscriber):
    """Keeps every `Published` it is handed inline."""

    def __init__(self, got: list[Published]) -> None:
        super().__init__()
        self.got = got

    def send_now(self, item: Published) -> bool:
        self.got.append(item)
        return True

    async def send(self, item: Published) -> None:  # snapshots come this way
        self.got.append(item)


async def test_publish_encodes_the_envelope_once_for_every_transport(store: SqliteStore) -> None:
    bus = InProcessBus(store, _snapshot)
    got: list[Published] = []
    bus.new_room("ses_\"c")  # a session this process created
    await bus.subscribe("ses_\"c", KeepingSubscriber(got), after_seq=0)
    bus.publish("ses_\"c", "message.delta", {"message_id": "m", "run_id": None, "skill": "assistant", "text": "é\n"})
    envelope = json.loads(got[0].text)
    assert envelope["seq"] == 1 and envelope["session_id"] == 'ses_"c' and envelope["type"] == "message.delta"
    assert envelope["data"] == {"message_id": "m", "run_id": None, "skill": "assistant", "text": "é\n"}
    assert got[0].event.data == envelope["data"]
    await bus.close()


async def test_an_events_time_reads_the_same_live_and_replayed_from_the_store(store: SqliteStore) -> None:
    """Stamps are whole milliseconds (their text is made once a millisecond), so the envelope a
    socket got live and the one rebuilt from the stored row are the same text."""
    from opencode_agent.core.bus import encode

    bus = InProcessBus(store, _snapshot)
    got: list[Published] = []
    bus.new_room("ses_t")  # a session this process created
    await bus.subscribe("ses_t", KeepingSubscriber(got), after_seq=0)
    for i in range(40):
        bus.publish("ses_t", "log", {"message": f"line {i}"})
        if i % 10 == 0:
            await asyncio.sleep(0.002)  # a few different milliseconds
    await store.flush()
    stored = await store.events_after("ses_t", 0, 100)
    assert [encode(ev) for ev in stored] == [p.text for p in got]
    stamps = [json.loads(p.text)["ts"] for p in got]
    assert len(set(stamps)) >= 2 and all(round(t * 1000) / 1000 == t for t in stamps)
    await bus.close()


def test_model_json_is_model_dump_json() -> None:
    from opencode_agent.core.protocol import (Message, MessageCreatedData, Session, TextPart, ToolCallPart, Usage,
                                              model_json)

    message = Message(id="msg_1", session_id="ses_1", role="assistant", skill="alpha", run_id="run_1",
                      parts=[TextPart(text="ü \"q\" \n"), ToolCallPart(id="c1", name="t", arguments={"a": [1, None]})],
                      usage=Usage(input_tokens=3, output_tokens=4, cost=0.25), created_at=1.5, updated_at=2.0)
    for model in (message, MessageCreatedData(message=message), Session(id="ses_1", created_at=1.0, updated_at=1.0)):
        assert model_json(model) == model.model_dump_json()


async def test_a_stored_session_whose_events_were_never_saved_starts_past_the_restart_gap(
        store: SqliteStore, tmp_path: Path) -> None:
    """A process killed within one group commit of a session's first events had handed out seqs
    1, 2, … that never reached the store. The next process must not hand them out again: a
    client holding seq 2 would take the new seq 3 for the one after what it saw."""
    from opencode_agent.core.bus import RESTART_SEQ_GAP

    lost = SqliteStore(tmp_path / "lost.sqlite")  # where the killed process's rows went: nowhere
    await lost.open()
    killed = InProcessBus(lost, _snapshot)
    killed.new_room("ses_k")
    held = [killed.publish("ses_k", "log", {"message": "never saved"}) for _ in range(3)]
    assert held == [1, 2, 3]  # published, then the process died before its group commit
    await killed.close()
    await lost.close()
    restarted = InProcessBus(store, _snapshot)  # nothing of ses_k is in the store
    got: list[Published] = []
    await restarted.subscribe("ses_k", KeepingSubscriber(got), after_seq=None)
    seq = restarted.publish("ses_k", "log", {"message": "after the restart"})
    assert seq == RESTART_SEQ_GAP + 1 and seq not in held
    await restarted.close()


async def test_a_snapshot_is_stamped_to_the_millisecond_like_every_other_event(store: SqliteStore) -> None:
    bus = InProcessBus(store, _snapshot)
    got: list[Published] = []
    await bus.subscribe("ses_s", KeepingSubscriber(got), after_seq=None)
    await _settle()
    ts = json.loads(got[0].text)["ts"]
    assert json.loads(got[0].text)["type"] == "session.state" and round(ts * 1000) / 1000 == ts
    await bus.close()


async def test_the_list_room_is_never_stored_and_counts_past_an_earlier_process(store: SqliteStore) -> None:
    """The list room's events are not stored, so a restarted server cannot replay them: a panel
    reconnecting with an offset from the process before gets one `sessions.state`, never the new
    process's events under numbers it has seen."""
    from opencode_agent.core.protocol import SESSIONS_ROOM

    before = InProcessBus(store, _snapshot)
    seen = [before.publish(SESSIONS_ROOM, "sessions.removed", {"session_id": f"ses_{i}"}) for i in range(3)]
    await before.close()
    await store.flush()
    assert await store.last_seq(SESSIONS_ROOM) == 0
    after = InProcessBus(store, _snapshot)
    after.publish(SESSIONS_ROOM, "sessions.removed", {"session_id": "ses_new"})
    got: list[Published] = []
    await after.subscribe(SESSIONS_ROOM, KeepingSubscriber(got), after_seq=seen[-1])
    await _settle()
    assert [json.loads(p.text)["type"] for p in got] == ["sessions.state"]
    assert got[0].seq == after.last_seq(SESSIONS_ROOM) > seen[-1]
    await after.close()


async def test_the_list_room_unfollowed_only_counts_and_a_later_join_gets_a_snapshot(store: SqliteStore) -> None:
    """Every send tells the list room its chat moved up; with no panel following the list that
    event is only counted (not built, encoded or kept), and a join with an offset from before it
    gets the listing, since what it missed was never kept."""
    from opencode_agent.core.protocol import SESSIONS_ROOM, SessionsRemovedData

    bus = InProcessBus(store, _snapshot)
    got: list[Published] = []
    await bus.subscribe(SESSIONS_ROOM, KeepingSubscriber(got), after_seq=None)
    follower = next(iter(bus._rooms[SESSIONS_ROOM].cursors))  # noqa: SLF001
    bus.publish_if_followed(SESSIONS_ROOM, "sessions.removed", lambda: SessionsRemovedData(session_id="ses_a"))
    await _settle()
    assert [json.loads(p.text)["type"] for p in got] == ["sessions.state", "sessions.removed"]
    seen = got[-1].seq
    bus.unsubscribe(SESSIONS_ROOM, follower)
    built: list[str] = []

    def make() -> SessionsRemovedData:
        built.append("built")
        return SessionsRemovedData(session_id="ses_b")

    bus.publish_if_followed(SESSIONS_ROOM, "sessions.removed", make)
    assert built == [] and bus.last_seq(SESSIONS_ROOM) == seen + 1
    again: list[Published] = []
    await bus.subscribe(SESSIONS_ROOM, KeepingSubscriber(again), after_seq=seen)
    await _settle()
    assert [(json.loads(p.text)["type"], p.seq) for p in again] == [("sessions.state", seen + 1)]
    await bus.close()


def stored_seqs(db: Path, session_id: str) -> list[int]:
    """Every event seq the store still holds for the session (rows expanded)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, seq_end FROM events WHERE session_id=?", (session_id,)).fetchall()
    return sorted(s for seq, end in rows for s in range(seq, (end or seq) + 1))


async def test_the_event_log_keeps_what_a_rejoin_can_ask_for_and_drops_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "opencode.sqlite"
    store = SqliteStore(db, event_delay=0.0)
    await store.open()
    bus = InProcessBus(store, _snapshot, ring_size=16, replay_max_events=50)
    bus.new_room("ses_p")
    for i in range(300):
        bus.publish("ses_p", "log", {"level": "debug", "message": f"line {i}"})
        if i % 20 == 0:
            await store.flush()  # rows of 20-odd events, as a streaming reply makes them
    await store.flush()
    kept = stored_seqs(db, "ses_p")
    assert kept == list(range(kept[0], 301)) and 300 - 2 * 50 - 20 <= kept[0] - 1 <= 300 - 50
    # Every offset a rejoin may still use replays whole from the store (the ring holds 16).
    for after in (250, 260, 299):
        sub = RecordingSubscriber()
        await bus.subscribe("ses_p", sub, after_seq=after)
        await _settle()
        assert sub.seqs == list(range(after + 1, 301))
        bus.unsubscribe("ses_p", sub)
    await bus.close()
    # After a restart the room counts on past the gap, and its first event drops what came before.
    restarted = InProcessBus(store, _snapshot, ring_size=16, replay_max_events=50)
    await restarted.open_room("ses_p")
    seq = restarted.publish("ses_p", "log", {"level": "debug", "message": "after the restart"})
    await store.flush()
    assert stored_seqs(db, "ses_p") == [seq]
    await restarted.close()
    await store.close()
