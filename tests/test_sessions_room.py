"""The list room (`sessions.join`): a socket follows the sessions other sockets, REST calls and
scripts create, change, move up and delete, live and in order, and catches up after a reconnect.

Each test runs a real server on loopback: one WebSocket watches the list, another socket and plain
HTTP calls change it. A `ping` answered on the watching socket proves a negative: the server
writes what a socket was sent before it answers a command on it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fakes.scripted_provider import ScriptedProvider, ScriptedResolver, text_turn
from opencode_agent.core import protocol
from opencode_agent.core.skills import Skill
from wsclient import WsClient, run_final

ROOM = protocol.SESSIONS_ROOM


async def connect(client: Any) -> WsClient:
    return WsClient(await client.ws_connect("/opencode/ws"))


async def new_session(client: Any, **body: Any) -> dict[str, Any]:
    r = await client.post("/opencode/sessions", json={"skills": ["echo"], **body})
    assert r.status == 201, await r.text()
    return await r.json()


async def listing(client: Any) -> list[dict[str, Any]]:
    r = await client.get("/opencode/sessions")
    assert r.status == 200
    return (await r.json())["sessions"]


def room_events(ws: WsClient) -> list[dict[str, Any]]:
    """The list room's events so far, each checked against its protocol model."""
    events = [e for e in ws.events if e["session_id"] == ROOM]
    for e in events:
        protocol.EventAdapter.validate_python(e)
    return events


async def quiet(ws: WsClient) -> list[dict[str, Any]]:
    """Every list event published so far has reached `ws` (a ping's ack comes after them)."""
    await ws.command("ping")
    return room_events(ws)


def about(events: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [e for e in events if (e["data"].get("session") or {}).get("id", e["data"].get("session_id")) == sid]


async def test_the_list_follows_changes_made_elsewhere_in_order(client: Any) -> None:
    old = await new_session(client, title="Old")
    watcher, tab = await connect(client), await connect(client)
    joined = await watcher.command("sessions.join")
    assert joined == {"type": "ack", "id": joined["id"], "data": {"session_id": ROOM}}
    [state] = room_events(watcher)
    assert state["type"] == "sessions.state" and state["data"] == {"sessions": await listing(client)}

    created = await new_session(client, title="Ideas")                  # another tab's New chat
    r = await client.patch(f"/opencode/sessions/{created['id']}", json={"title": "Renamed"})
    assert r.status == 200
    await tab.command("configure", session_id=created["id"], patch={"skills": []})
    await tab.command("join", session_id=created["id"])
    sent = await tab.command("send", session_id=created["id"], text="@echo hello there")
    await tab.until(run_final(sent["data"]["run_id"]))
    r = await client.delete(f"/opencode/sessions/{old['id']}")
    assert r.status == 200

    events = (await quiet(watcher))[1:]
    assert [e["seq"] for e in events] == list(range(state["seq"] + 1, state["seq"] + 1 + len(events)))
    assert [(e["type"], e["data"].get("session", {}).get("title")) for e in events] == [
        ("sessions.changed", "Ideas"), ("sessions.changed", "Renamed"), ("sessions.changed", "Renamed"),
        ("sessions.changed", "Renamed"), ("sessions.removed", None)]
    assert events[0]["data"]["session"] == created
    assert events[2]["data"]["session"]["skills"] == []
    moved = events[3]["data"]["session"]
    assert moved["updated_at"] > events[2]["data"]["session"]["updated_at"]  # the send moved it up
    assert events[4]["data"] == {"session_id": old["id"]}
    # The summaries are the listing's rows: what GET now lists, in the order applying them gives.
    assert [s["id"] for s in await listing(client)] == [created["id"]]


async def test_a_send_is_one_list_event_and_a_reply_none(client: Any, service: Any) -> None:
    provider = ScriptedProvider()
    service.sessions.deps.models = ScriptedResolver(provider)
    service.skills.register(Skill(id="alpha", name="Alpha", description="test role", kind="role",
                                  instructions="ROLE:alpha"), replace=True)
    fresh = await new_session(client, skills=["alpha"])
    watcher, tab = await connect(client), await connect(client)
    await watcher.command("sessions.join")
    await tab.command("join", session_id=fresh["id"])
    for n, text in enumerate(["paint a lighthouse at dusk", "now at dawn"]):
        provider.turns.append(text_turn("Sure", input_tokens=100, output_tokens=20))
        sent = await tab.command("send", session_id=fresh["id"], text=text)
        await tab.until(run_final(sent["data"]["run_id"]))
        await tab.until(lambda e, n=n: e["type"] == "usage.updated" and e["data"]["usage"]["output_tokens"] == 20 * (n + 1))
        told = about((await quiet(watcher))[1:], fresh["id"])  # the ack came after the naming
        assert len(told) == n + 1, told
    first, second = (e["data"]["session"] for e in told)
    # The first message names the chat: one event says both (moved up, and its new title).
    assert first["title"] == "paint a lighthouse at dusk"
    assert second["updated_at"] > first["updated_at"]
    assert second["usage"]["output_tokens"] == 20  # the replies' usage is not told: the list shows none


async def test_a_rejoin_gets_what_it_missed_or_a_fresh_listing(client: Any) -> None:
    gone = await new_session(client, title="Gone soon")
    other_tab = await connect(client)
    await other_tab.command("sessions.join")  # the room is followed while the watcher is away
    watcher = await connect(client)
    await watcher.command("sessions.join")
    seen = room_events(watcher)[-1]["seq"]
    await watcher.ws.close()

    made = await new_session(client, title="Made while away")
    await client.patch(f"/opencode/sessions/{made['id']}", json={"title": "Renamed while away"})
    await client.delete(f"/opencode/sessions/{gone['id']}")

    back = await connect(client)
    await back.command("sessions.join", after_seq=seen)
    missed = await quiet(back)
    assert [(e["seq"], e["type"]) for e in missed] == [
        (seen + 1, "sessions.changed"), (seen + 2, "sessions.changed"), (seen + 3, "sessions.removed")]
    for offset in (0, seen + 1000):  # older than the ring holds (nothing is stored), or unknown
        other = await connect(client)
        await other.command("sessions.join", after_seq=offset)
        assert [(e["type"], e["seq"]) for e in await quiet(other)] == [("sessions.state", seen + 3)]
        assert other.events[0]["data"] == {"sessions": await listing(client)}
        await other.ws.close()

    # Followed by no one, the room keeps nothing: a rejoin then gets a fresh listing.
    for ws in (other_tab, back):
        await ws.ws.close()
    await until_unfollowed(client)
    await client.patch(f"/opencode/sessions/{made['id']}", json={"title": "Renamed unwatched"})
    again = await connect(client)
    await again.command("sessions.join", after_seq=seen + 3)
    assert [(e["type"], e["seq"]) for e in await quiet(again)] == [("sessions.state", seen + 4)]
    assert again.events[0]["data"] == {"sessions": await listing(client)}


async def until_unfollowed(client: Any) -> None:
    """Until the server has seen every socket of the list room close."""
    for _ in range(200):
        if service_of(client).bus.subscriber_count(ROOM) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the list room is still followed")


async def test_leaving_the_list_or_every_session(client: Any) -> None:
    chat = await new_session(client)
    watcher = await connect(client)
    await watcher.command("join", session_id=chat["id"])
    await watcher.command("sessions.join")
    await watcher.command("leave")  # every session: not the list
    await client.patch(f"/opencode/sessions/{chat['id']}", json={"title": "One"})
    assert [e["type"] for e in await quiet(watcher)] == ["sessions.state", "sessions.changed"]
    await watcher.command("sessions.leave")
    await client.patch(f"/opencode/sessions/{chat['id']}", json={"title": "Two"})
    assert len(await quiet(watcher)) == 2
    assert service_of(client).bus.subscriber_count(ROOM) == 0


def service_of(client: Any) -> Any:
    from opencode_agent.routes import SERVICE

    return client.app[SERVICE]


async def test_a_session_made_while_the_listing_is_read_follows_the_snapshot(client: Any, monkeypatch: Any) -> None:
    """The listing is read from the store: a session created during that read may be missing from
    it, so its event must come after the snapshot rather than be counted in it."""
    store = service_of(client).store
    read, release = asyncio.Event(), asyncio.Event()
    real = store.list_sessions

    async def slow_list() -> list[Any]:
        rows = await real()
        read.set()
        await release.wait()
        return rows

    monkeypatch.setattr(store, "list_sessions", slow_list)
    watcher = await connect(client)
    cid = await watcher.post("sessions.join")
    await read.wait()
    monkeypatch.setattr(store, "list_sessions", real)
    made = await new_session(client, title="Made meanwhile")
    release.set()
    await watcher.reply(cid)
    state, *after = await quiet(watcher)
    assert made["id"] not in [s["id"] for s in state["data"]["sessions"]]
    assert [(e["type"], e["data"]["session"]["id"]) for e in after] == [("sessions.changed", made["id"])]


async def test_list_events_carry_no_key(client: Any) -> None:
    key = "sk-live-list-room-0123456789abcdef"
    r = await client.post("/opencode/providers", json={"name": "lmstudio", "kind": "openai",
                                                       "base_url": "http://127.0.0.1:9/v1", "default_model": "m"})
    assert r.status == 201, await r.text()
    assert (await client.put("/opencode/providers/lmstudio/key", json={"key": key})).status == 200
    watcher = await connect(client)
    await watcher.command("sessions.join")
    chat = await new_session(client, provider="lmstudio")
    await client.patch(f"/opencode/sessions/{chat['id']}", json={"model": "m2"})
    events = await quiet(watcher)
    assert [e["data"]["session"]["provider"] for e in events[1:]] == ["lmstudio", "lmstudio"]
    text = json.dumps(events)
    assert key not in text and key[-8:] not in text
