"""The WebSocket endpoint: every command, bad input of each kind, fan-out, replay, resync, abort."""

from __future__ import annotations

import asyncio
import json

import pytest

from wsclient import WsClient, run_final


async def new_session(client, **body):
    r = await client.post("/opencode/sessions", json={"skills": ["echo"], **body})
    assert r.status == 201, await r.text()
    return (await r.json())["id"]


async def connect(client) -> WsClient:
    return WsClient(await client.ws_connect("/opencode/ws"))


async def test_join_send_echo_stream(client):
    sid = await new_session(client)
    ws = await connect(client)
    ack = await ws.command("join", session_id=sid)
    assert ack["type"] == "ack"
    state = ws.of_type("session.state")[0]
    assert state["data"]["session"]["id"] == sid
    sent = await ws.command("send", session_id=sid, text="hello brave new world")
    run_id = sent["data"]["run_id"]
    final = await ws.until(run_final(run_id))
    assert final["data"]["run"]["status"] == "completed"
    deltas = [e["data"]["text"] for e in ws.of_type("message.delta")]
    assert "".join(deltas) == "hello brave new world"
    assert len(deltas) == 4
    seqs = [e["seq"] for e in ws.events if e["type"] != "session.state"]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    completed = ws.of_type("message.completed")[-1]["data"]["message"]
    assert completed["status"] == "completed" and completed["skill"] == "echo"


async def test_two_tabs_see_the_same_stream(client):
    sid = await new_session(client)
    a, b = await connect(client), await connect(client)
    await a.command("join", session_id=sid)
    await b.command("join", session_id=sid)
    sent = await a.command("send", session_id=sid, text="one two three")
    await a.until(run_final(sent["data"]["run_id"]))
    await b.until(run_final(sent["data"]["run_id"]))
    strip = lambda ws: [(e["seq"], e["type"]) for e in ws.events if e["seq"] > 0]
    assert strip(a) == strip(b)


async def test_replay_after_drop_is_exactly_once_in_order(client):
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text="alpha beta")
    await ws.until(run_final(sent["data"]["run_id"]))
    seen = max(e["seq"] for e in ws.events)
    await ws.ws.close()
    # While disconnected, another client causes more events.
    other = await connect(client)
    await other.command("join", session_id=sid)
    sent2 = await other.command("send", session_id=sid, text="gamma delta epsilon")
    await other.until(run_final(sent2["data"]["run_id"]))
    missed = [e for e in other.events if e["seq"] > seen]
    again = await connect(client)
    await again.command("join", session_id=sid, after_seq=seen)
    await again.until(run_final(sent2["data"]["run_id"]))
    got = [(e["seq"], e["type"]) for e in again.events]
    assert got == [(e["seq"], e["type"]) for e in missed]
    assert not again.of_type("session.resync")


async def test_replay_from_store_when_ring_is_exceeded(aiohttp_client, make_app, config):
    config.ring_size = 8
    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text=" ".join(f"w{i}" for i in range(40)))
    await ws.until(run_final(sent["data"]["run_id"]))
    all_events = [(e["seq"], e["type"]) for e in ws.events if e["seq"] > 0]
    again = await connect(client)
    await again.command("join", session_id=sid, after_seq=2)
    await again.until(run_final(sent["data"]["run_id"]))
    assert [(e["seq"], e["type"]) for e in again.events] == [x for x in all_events if x[0] > 2]


async def test_resync_when_offset_is_too_old_or_unknown(aiohttp_client, make_app, config):
    config.ring_size = 4
    config.replay_max_events = 5
    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text=" ".join(f"w{i}" for i in range(20)))
    await ws.until(run_final(sent["data"]["run_id"]))
    again = await connect(client)
    await again.command("join", session_id=sid, after_seq=1)
    assert [e["type"] for e in again.events] == ["session.resync"]
    assert again.events[0]["data"]["messages"][-1]["status"] == "completed"
    future = await connect(client)
    await future.command("join", session_id=sid, after_seq=10_000)
    assert [e["type"] for e in future.events] == ["session.resync"]


async def test_abort_stops_the_stream(aiohttp_client, make_app, config):
    config.echo_delay = 0.05
    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text=" ".join(["word"] * 200))
    await ws.until(lambda e: e["type"] == "message.delta")
    ack = await ws.command("abort", session_id=sid)
    assert ack["data"]["aborted"] == [sent["data"]["run_id"]]
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "aborted"
    after = [e for e in ws.events if e["seq"] > final["seq"] and e["type"] == "message.delta"]
    assert after == []
    msg = ws.of_type("message.completed")[-1]["data"]["message"]
    assert msg["status"] == "aborted" and 0 < len(msg["parts"][0]["text"]) < 1000


async def test_configure_and_ping(client):
    sid = await new_session(client)
    ws = await connect(client)
    assert (await ws.command("ping"))["data"] == {"pong": True}
    ack = await ws.command("configure", session_id=sid, patch={"title": "Renamed", "skills": ["echo"]})
    assert ack["data"]["session"]["title"] == "Renamed"
    r = await client.get(f"/opencode/sessions/{sid}")
    assert (await r.json())["title"] == "Renamed"


@pytest.mark.parametrize("frame,code", [
    ("not json", "bad_json"),
    ("[1,2]", "unknown_command"),
    (json.dumps({"id": "x", "type": "fly"}), "unknown_command"),
    (json.dumps({"id": "x", "type": "join"}), "validation_error"),
    (json.dumps({"id": "x", "type": "join", "session_id": 5}), "validation_error"),
    (json.dumps({"id": "x", "type": "join", "session_id": "ses_nope"}), "not_found"),
    (json.dumps({"id": "x", "type": "send", "session_id": "ses_nope", "text": "hi"}), "not_found"),
    (json.dumps({"id": "x", "type": "join", "session_id": "../../etc"}), "validation_error"),
    (json.dumps({"id": "x", "type": "ping", "extra": 1}), "validation_error"),
])
async def test_bad_frames_get_errors_and_the_socket_stays_up(client, service, frame, code):
    ws = await connect(client)
    reply = await ws.raw(frame)
    assert reply["type"] == "error" and reply["error"]["code"] == code, reply
    assert (await ws.command("ping"))["type"] == "ack"
    assert await service.store.list_sessions() == []


async def test_binary_and_oversized_frames(client):
    ws = await connect(client)
    reply = await ws.raw(b"\x00\x01")
    assert reply["error"]["code"] == "binary_frame"
    big = json.dumps({"id": "big", "type": "ping", "pad": "x" * (1 << 20)})
    reply = await ws.raw(big)
    assert reply["error"]["code"] == "frame_too_large"
    assert (await ws.command("ping"))["type"] == "ack"


async def test_queued_message_runs_after_the_busy_one(aiohttp_client, make_app, config):
    config.echo_delay = 0.01
    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    first = await ws.command("send", session_id=sid, text="first " * 10)
    second = await ws.command("send", session_id=sid, text="second")
    assert second["data"]["queued"] is True
    await ws.until(run_final(second["data"]["run_id"]))
    finals = [e["data"]["run"]["id"] for e in ws.of_type("run.status") if e["data"]["run"]["status"] == "completed"]
    assert finals == [first["data"]["run_id"], second["data"]["run_id"]]


async def test_interrupt_mode_aborts_then_sends(aiohttp_client, make_app, config):
    config.echo_delay = 0.05
    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    first = await ws.command("send", session_id=sid, text="long " * 100)
    second = await ws.command("send", session_id=sid, text="now", mode="interrupt")
    assert second["data"]["queued"] is False
    assert (await ws.until(run_final(first["data"]["run_id"])))["data"]["run"]["status"] == "aborted"
    assert (await ws.until(run_final(second["data"]["run_id"])))["data"]["run"]["status"] == "completed"


async def test_an_idle_rooms_ring_is_trimmed_and_replay_comes_from_the_store(client, service):
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text="kept in the store")
    await ws.until(run_final(sent["data"]["run_id"]))
    events = [(e["seq"], e["type"]) for e in ws.events if e["seq"] > 0]
    await ws.ws.close()

    async def left() -> None:
        while service.bus.subscriber_count(sid):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(left(), 5)  # the server notices the closed socket
    assert service.bus.trim_idle(3600) == 0  # not idle long enough
    await service.store.flush()
    assert service.bus.trim_idle(0) == 1  # the session's room (the list room, unfollowed, keeps nothing)
    again = await connect(client)
    await again.command("join", session_id=sid, after_seq=1)
    assert [(e["seq"], e["type"]) for e in again.events] == [x for x in events if x[0] > 1]
    # and the room works as before afterwards
    sent2 = await again.command("send", session_id=sid, text="still live")
    await again.until(run_final(sent2["data"]["run_id"]))


async def test_an_idle_session_is_unloaded_and_comes_back_whole(client: Any, service: Any) -> None:
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    sent = await ws.command("send", session_id=sid, text="remember me")
    await ws.until(run_final(sent["data"]["run_id"]))
    r = await client.patch(f"/opencode/sessions/{sid}", json={"title": "kept title"})
    assert r.status == 200
    assert service.sessions.evict_idle(0) == 0  # someone is joined
    await ws.ws.close()

    async def left() -> None:
        while service.bus.subscriber_count(sid):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(left(), 5)
    assert service.sessions.evict_idle(3600) == 0  # not idle long enough
    assert service.sessions.evict_idle(0) == 1
    assert sid not in service.sessions._live  # noqa: SLF001
    again = await connect(client)
    await again.command("join", session_id=sid)
    state = again.of_type("session.state")[-1]["data"]
    assert state["session"]["title"] == "kept title"
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
    assert state["messages"][0]["parts"][0]["text"] == "remember me"
    sent2 = await again.command("send", session_id=sid, text="and go on")
    final = await again.until(run_final(sent2["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed"


async def _writes_for_one_reply(aiohttp_client, make_app, config, monkeypatch, hold: float) -> tuple[list[bytes], list[dict]]:
    """Count the server's socket writes on one WebSocket while a four-word echo reply streams."""
    from asyncio import selector_events

    config.ws_hold, config.echo_delay = hold, 0.03  # deltas 30 ms apart
    client = await aiohttp_client(make_app())
    port = client.server.port
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    await asyncio.sleep(0.05)  # the join's frames are written before counting starts
    writes: list[bytes] = []
    real_write = selector_events._SelectorSocketTransport.write

    def counting_write(self, data):  # the server's side of the socket: its local port is the server's
        if self.get_extra_info("sockname")[1] == port:
            writes.append(bytes(data))
        return real_write(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", counting_write)
    sent = await ws.command("send", session_id=sid, text="one two three four")
    await ws.until(run_final(sent["data"]["run_id"]))
    await asyncio.sleep(0.05)
    monkeypatch.undo()
    await client.close()  # its service frees the data dir for the next call's (one service per data dir)
    return writes, ws.events


def _frame_types(write: bytes) -> list[str]:
    """The `type` of each unmasked text frame one server write holds, in order."""
    types, at = [], 0
    while at < len(write):
        size, at = write[at + 1] & 0x7F, at + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, at = int.from_bytes(write[at:at + width], "big"), at + width
        types.append(json.loads(write[at:at + size])["type"])
        at += size
    return types


async def test_a_replys_start_and_end_leave_in_one_write_each(aiohttp_client, make_app, config, monkeypatch):
    """Status events are held a moment and written together; the ack takes them with it at once
    (a client waiting on it never waits out the hold); deltas are not held."""
    one_by_one, events_unheld = await _writes_for_one_reply(aiohttp_client, make_app, config, monkeypatch, 0.0)
    held, events = await _writes_for_one_reply(aiohttp_client, make_app, config, monkeypatch, 0.1)
    frames = len([e for e in events if e["seq"] > 0]) + 1  # the events and the send's ack
    assert [e["type"] for e in events] == [e["type"] for e in events_unheld]
    assert len(one_by_one) == frames  # without the hold: one write per frame (the count sees them all)
    # With it: the start (user message, reply, run status) leaves with the first delta, the
    # title with the send's ack in the next write (at once, not after the hold), each further
    # delta is one write, and the end (reply, status) one.
    types = [_frame_types(w) for w in held]
    assert len(held) == 2 + 3 + 1, types
    assert types[0][-1] == "message.delta" and types[0].count("message.created") == 2 and "run.status" in types[0]
    assert types[1][-1] == "ack"
    assert types[2:5] == [["message.delta"]] * 3
    assert "message.delta" not in types[5] and "ack" not in types[5]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


async def test_a_held_frame_never_outlives_a_delta_or_a_close(aiohttp_client, make_app, config):
    """A delta writes whatever is held before it, in order; a socket the server closes gets its
    held frames before the close frame. The hold is 10 s here, so only those can write them; an
    ack is never held."""
    from aiohttp import WSMsgType

    from opencode_agent.routes import SERVICE

    config.ws_hold = 10.0
    client = await aiohttp_client(make_app())
    bus = client.app[SERVICE].bus
    sid = await new_session(client)
    ws = await connect(client)
    await asyncio.wait_for(ws.command("join", session_id=sid), 1.0)  # the ack (and the state before it) at once
    assert [e["type"] for e in ws.events] == ["session.state"]
    bus.publish(sid, "log", {"level": "info", "module": "opencode.test", "message": "held", "time": 0.0, "run_id": None})
    with pytest.raises(asyncio.TimeoutError):
        await ws.until(lambda e: e["type"] == "log", timeout=0.2)  # the log line is held...
    delta = {"message_id": "msg_x", "run_id": "run_x", "skill": "echo", "text": "hi"}
    bus.publish(sid, "message.delta", delta)  # ...until a delta comes
    await ws.until(lambda e: e["type"] == "message.delta", timeout=1.0)
    assert [e["type"] for e in ws.events] == ["session.state", "log", "message.delta"]

    bus.publish(sid, "log", {"level": "info", "module": "opencode.test", "message": "last words", "time": 0.0, "run_id": None})
    room = bus._rooms[sid]
    (sub,) = room.cursors
    await bus._drop(room, sub, "test")
    await ws.until(lambda e: e["type"] == "log" and e["data"]["message"] == "last words", timeout=1.0)
    msg = await ws.ws.receive(timeout=1.0)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1013


async def test_a_stopping_server_closes_its_sockets_as_going_away(aiohttp_client, make_app):
    """A WebSocket handler runs until its socket closes: without this a stopping server kept its
    clients for the whole shutdown timeout, and they went on sending into it."""
    from aiohttp import WSCloseCode, WSMsgType

    client = await aiohttp_client(make_app())
    sid = await new_session(client)
    ws = await connect(client)
    await ws.command("join", session_id=sid)
    started = asyncio.get_running_loop().time()
    await client.app.shutdown()  # what a stopping runner does first
    msg = await ws.ws.receive(timeout=2.0)
    assert msg.type == WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_command_id_of_dots_is_still_a_command_id(client):
    """Session ids may not be dots alone (a URL cannot carry them); a command's id never goes into
    a URL, and a client may number its commands as it likes."""
    ws = await connect(client)
    for cid in (".", "..", "1.2"):
        answer = await ws.raw(json.dumps({"id": cid, "type": "ping"}))
        assert answer["type"] == "ack" and answer["id"] == cid, answer
