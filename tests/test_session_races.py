"""Sessions under interleavings: every await between reading a session's state and acting on it is
a place where another send, a reply's end, an abort, a patch, a delete or a shutdown can land.
Each test holds one such await open (a slow save) and lands the other thing inside it."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from fakes.scripted_provider import ScriptedProvider, ScriptedResolver, text_turn
from opencode_agent.core.errors import Conflict, NotFound, StoreUnavailable
from opencode_agent.core.protocol import Budget, Message, SendBody, SessionPatch
from opencode_agent.core.providers.base import ChatRequest, Finish, TextDelta, UsageReport
from opencode_agent.core.skills import Skill


@pytest.fixture
async def env(client, service):
    provider = ScriptedProvider()
    service.sessions.deps.models = ScriptedResolver(provider)
    service.skills.register(Skill(id="alpha", name="Alpha", description="test role", kind="role",
                                  instructions="ROLE:alpha"), replace=True)

    async def session() -> str:
        r = await client.post("/opencode/sessions", json={"skills": ["alpha"]})
        assert r.status == 201, await r.text()
        return (await r.json())["id"]

    return provider, session


def held(gate: asyncio.Event, usage: UsageReport | None = None):
    """A turn that streams a word, then waits for `gate` before it finishes."""
    async def turn(_: ChatRequest) -> AsyncIterator[Any]:
        yield TextDelta("first reply")
        await gate.wait()
        if usage is not None:
            yield usage
        yield Finish("stop")
    return turn


def never_ending(_: ChatRequest) -> AsyncIterator[Any]:
    """A turn that streams a word and then waits until it is stopped (and takes a moment to stop)."""
    async def turn() -> AsyncIterator[Any]:
        yield TextDelta("starts")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.02)
            raise
    return turn()


def slowed(monkeypatch: Any, owner: Any, name: str, when: Any, during: Any) -> None:
    """Make `owner.name(x)` run `await during()` first whenever `when(x)`."""
    real = getattr(owner, name)

    async def slow(item: Any) -> None:
        if when(item):
            await during()
        await real(item)

    monkeypatch.setattr(owner, name, slow)


async def a_late_send_held_in_its_save(env: Any, service: Any, monkeypatch: Any
                                      ) -> tuple[str, asyncio.Future[Any], asyncio.Event]:
    """A session whose reply never ends, and a second send ("late") held in its save until the
    returned event is set: the session, the send in flight, the event."""
    provider, session = env
    provider.turns.append(never_ending)
    sid = await session()
    await service.sessions.send(sid, SendBody(text="first"))
    while not provider.requests:
        await asyncio.sleep(0.001)
    disk = asyncio.Event()
    slowed(monkeypatch, service.store, "save_message", lambda m: m.role == "user" and m.text() == "late", disk.wait)
    sending = asyncio.ensure_future(service.sessions.send(sid, SendBody(text="late")))
    await asyncio.sleep(0.01)
    return sid, sending, disk


def texts(request: ChatRequest) -> list[tuple[str, str]]:
    return [(m.role, "".join(getattr(p, "text", "") for p in m.parts)) for m in request.messages]


async def test_a_queued_message_does_not_see_the_one_queued_after_it(env, service):
    provider, session = env
    gate = asyncio.Event()
    provider.turns.extend([held(gate), text_turn("B answer"), text_turn("C answer")])
    sid = await session()
    await service.sessions.send(sid, SendBody(text="A"))
    b = await service.sessions.send(sid, SendBody(text="B"))
    c = await service.sessions.send(sid, SendBody(text="C"))
    assert b.queued and c.queued
    gate.set()
    await asyncio.wait_for(service.sessions.wait_runs(sid, c.run_ids), 5)
    assert texts(provider.requests[1]) == [("user", "A"), ("assistant", "first reply"), ("user", "B")]
    assert texts(provider.requests[2])[-3:] == [("user", "B"), ("assistant", "B answer"), ("user", "C")]


async def test_a_message_queued_as_the_busy_reply_ends_still_runs(env, service, monkeypatch):
    """A message sent while a reply runs is saved before it joins the queue; if that reply ends
    during the save, nothing else would start the queued message (nor any sent after it)."""
    provider, session = env
    reply_may_end = asyncio.Event()
    provider.turns.extend([held(reply_may_end), text_turn("second reply")])
    sid = await session()
    first = await service.sessions.send(sid, SendBody(text="first"))

    async def the_reply_ends() -> None:
        reply_may_end.set()
        await service.sessions.wait_runs(sid, first.run_ids)

    slowed(monkeypatch, service.store, "save_message", lambda m: m.role == "user" and m.text() == "second",
           the_reply_ends)
    second = await service.sessions.send(sid, SendBody(text="second"))
    assert not second.queued  # it started as soon as it was saved, before the answer
    [reply] = await asyncio.wait_for(service.sessions.wait_runs(sid, second.run_ids), 5)
    assert reply.status == "completed" and reply.text() == "second reply"


async def test_two_patches_at_once_both_land(env, service):
    _, session = env
    sid = await session()
    await asyncio.gather(service.sessions.patch(sid, SessionPatch(title="renamed")),
                         service.sessions.patch(sid, SessionPatch(budget=Budget(max_tokens=1000))))
    for s in (await service.sessions.get(sid), await service.store.get_session(sid)):
        assert (s.title, s.budget.max_tokens) == ("renamed", 1000)


async def test_two_remembered_permissions_at_once_both_land(env, service):
    _, session = env
    sid = await session()
    await asyncio.gather(service.sessions.remember_permission(sid, "edit", "allow"),
                         service.sessions.remember_permission(sid, "queue", "deny"))
    assert (await service.sessions.get(sid)).permissions == {"edit": "allow", "queue": "deny"}


async def test_usage_counted_while_a_patch_saves_is_kept(env, service, monkeypatch):
    provider, session = env
    reply_may_end = asyncio.Event()
    provider.turns.append(held(reply_may_end, UsageReport(1000, 500)))
    sid = await session()
    await service.sessions.patch(sid, SessionPatch(title="named"))  # no automatic title later
    sent = await service.sessions.send(sid, SendBody(text="hi"))

    async def the_reply_ends() -> None:
        reply_may_end.set()
        await service.sessions.wait_runs(sid, sent.run_ids)

    slowed(monkeypatch, service.store, "save_session", lambda s: s.title == "configured", the_reply_ends)
    await service.sessions.patch(sid, SessionPatch(title="configured"))
    await service.store.flush()
    for s in (await service.sessions.get(sid), await service.store.get_session(sid)):
        assert (s.title, s.usage.output_tokens) == ("configured", 500)


async def test_an_abort_during_the_final_save_lets_the_reply_complete(env, service, monkeypatch):
    """A reply that has finished is saving its final text: an abort now has nothing to stop, and the
    run is not over (for `wait_idle`, the next queued message) until that save is done."""
    provider, session = env
    provider.turns.append(text_turn("done"))
    sid = await session()
    saving, disk = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        saving.set()
        await disk.wait()

    slowed(monkeypatch, service.store, "save_message", lambda m: m.role == "assistant" and m.status == "completed",
           hold)
    sent = await service.sessions.send(sid, SendBody(text="hi"))
    await asyncio.wait_for(saving.wait(), 5)
    assert (await service.sessions.abort(sid)).aborted == []
    idle = asyncio.ensure_future(service.sessions.wait_idle(sid))
    await asyncio.sleep(0.05)
    assert not idle.done()
    disk.set()
    await asyncio.wait_for(idle, 5)
    [reply] = await service.sessions.wait_runs(sid, sent.run_ids)
    assert reply.status == "completed" and reply.text() == "done"


async def test_a_send_while_its_session_is_deleted_is_refused_and_starts_nothing(env, service):
    provider, session = env
    provider.turns.extend([never_ending, never_ending])
    sid = await session()
    await service.sessions.send(sid, SendBody(text="first"))
    while not provider.requests:
        await asyncio.sleep(0.001)
    deleting = asyncio.ensure_future(service.sessions.delete(sid))
    await asyncio.sleep(0)
    with pytest.raises(NotFound):
        await service.sessions.send(sid, SendBody(text="late"))
    await deleting
    await asyncio.sleep(0.05)
    assert len(provider.requests) == 1


async def test_a_message_saved_as_the_service_shuts_down_is_settled(env, service, monkeypatch):
    """`wait_runs` (the node waits on it) returns for a message queued while shutdown began, and a
    send after it is refused rather than started."""
    provider, _ = env
    sid, sending, disk = await a_late_send_held_in_its_save(env, service, monkeypatch)
    await service.sessions.shutdown()
    disk.set()
    late = await sending
    assert await asyncio.wait_for(service.sessions.wait_runs(sid, late.run_ids), 2) == []
    with pytest.raises(Conflict) as refused:
        await service.sessions.send(sid, SendBody(text="after"))
    assert refused.value.code == "shutting_down"
    assert len(provider.requests) == 1


async def test_two_sends_at_once_are_stored_in_the_order_they_came(env, service):
    provider, session = env
    gate = asyncio.Event()
    provider.turns.extend([held(gate), text_turn("two answer")])
    sid = await session()
    one, two = await asyncio.gather(service.sessions.send(sid, SendBody(text="one")),
                                    service.sessions.send(sid, SendBody(text="two")))
    assert not one.queued and two.queued
    gate.set()
    await asyncio.wait_for(service.sessions.wait_runs(sid, two.run_ids), 5)
    await service.store.flush()
    stored, _ = await service.store.get_messages(sid, limit=50)
    assert [m.text() for m in stored if m.role == "user"] == ["one", "two"]
    events = await service.store.events_after(sid, 0, 10_000)
    created = [e.data["message"]["parts"][0]["text"] for e in events
               if e.type == "message.created" and e.data["message"]["role"] == "user"]
    assert created[0] == "one"


async def test_a_send_behind_a_message_still_saving_to_queue_comes_after_it(env, service, monkeypatch):
    """The busy reply ends while the second message is being saved to queue, and a third comes
    meanwhile: the third must not start at once, ahead of the second."""
    provider, session = env
    reply_may_end = asyncio.Event()
    provider.turns.extend([held(reply_may_end), text_turn("second reply"), text_turn("third reply")])
    sid = await session()
    first = await service.sessions.send(sid, SendBody(text="first"))
    sending_third: list[asyncio.Future[Any]] = []

    async def the_reply_ends_and_a_third_comes() -> None:
        reply_may_end.set()
        await service.sessions.wait_runs(sid, first.run_ids)
        sending_third.append(asyncio.ensure_future(service.sessions.send(sid, SendBody(text="third"))))
        await asyncio.sleep(0.01)

    slowed(monkeypatch, service.store, "save_message", lambda m: m.role == "user" and m.text() == "second",
           the_reply_ends_and_a_third_comes)
    second = await service.sessions.send(sid, SendBody(text="second"))
    third = await sending_third[0]
    assert not second.queued and third.queued
    await asyncio.wait_for(service.sessions.wait_runs(sid, third.run_ids), 5)
    assert [texts(r)[-1] for r in provider.requests] == [("user", "first"), ("user", "second"), ("user", "third")]


async def test_a_message_saving_to_queue_as_its_session_is_deleted_leaves_no_row(env, service, monkeypatch):
    provider, _ = env
    sid, sending, disk = await a_late_send_held_in_its_save(env, service, monkeypatch)
    deleting = asyncio.ensure_future(service.sessions.delete(sid))
    await asyncio.sleep(0.05)
    disk.set()
    await sending
    await deleting
    await service.store.flush()
    assert await service.store.get_session(sid) is None
    assert (await service.store.get_messages(sid, limit=50))[0] == []
    assert await service.store.events_after(sid, 0, 10_000) == []  # `session.deleted` went with them
    assert len(provider.requests) == 1


async def test_a_chat_title_that_cannot_be_saved_does_not_fail_the_send(env, service, monkeypatch, caplog):
    provider, session = env
    provider.turns.append(text_turn("hello"))
    sid = await session()

    async def disk_full(s: Any) -> None:
        raise StoreUnavailable("database or disk is full")

    monkeypatch.setattr(service.store, "save_session", disk_full)
    sent = await service.sessions.send(sid, SendBody(text="name me"))
    [reply] = await asyncio.wait_for(service.sessions.wait_runs(sid, sent.run_ids), 5)
    assert reply.status == "completed"
    assert any("could not name session" in r.getMessage() for r in caplog.records)


async def test_a_session_deleted_and_created_again_under_its_id_keeps_every_event(env, service, client):
    """The node recreates its session under the same id when the chat was deleted in the panel.
    The new session's events must all be stored from seq 1 (none collide with the old session's),
    and the old room's closing timer must not close the new session's room."""
    provider, _ = env
    provider.turns.extend([text_turn("old reply"), text_turn("new reply")])

    async def chat(text: str) -> None:
        r = await client.post("/opencode/sessions", json={"id": "ses_reused", "skills": ["alpha"]})
        assert r.status == 201, await r.text()
        sent = await service.sessions.send("ses_reused", SendBody(text=text))
        await asyncio.wait_for(service.sessions.wait_runs("ses_reused", sent.run_ids), 5)

    await chat("old")
    await service.sessions.delete("ses_reused")
    await chat("new")
    room = service.bus.room_of("ses_reused")
    await asyncio.sleep(2.1)  # the deleted session's room closes now, not the new one
    assert service.bus.room_of("ses_reused") is room
    await service.store.flush()
    events = await service.store.events_after("ses_reused", 0, 10_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert "session.deleted" not in {e.type for e in events}
    texts_created = [e.data["message"]["parts"][0]["text"] for e in events if e.type == "message.created"
                     and e.data["message"]["role"] == "user"]
    assert texts_created == ["new"]


async def test_a_repeated_send_is_answered_once_not_sent_twice(env, service, client, monkeypatch):
    """A panel whose socket dropped before a send's answer sends it again under the same
    `client_id`: over the socket, over REST, and while the first is still saving, the repeat gets
    the first one's answer, and the session has one message and one reply."""
    provider, session = env
    provider.turns.extend([text_turn("only reply"), text_turn("second reply")])
    sid = await session()
    disk = asyncio.Event()
    slowed(monkeypatch, service.store, "save_message", lambda m: m.role == "user", disk.wait)
    first = asyncio.ensure_future(service.sessions.send(sid, SendBody(text="once", client_id="tab1-0001")))
    await asyncio.sleep(0.01)
    repeat = asyncio.ensure_future(service.sessions.send(sid, SendBody(text="once", client_id="tab1-0001")))
    await asyncio.sleep(0.01)
    disk.set()
    a, b = await asyncio.wait_for(asyncio.gather(first, repeat), 5)
    assert a == b
    await asyncio.wait_for(service.sessions.wait_runs(sid, a.run_ids), 5)
    over_rest = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "once", "client_id": "tab1-0001"})
    assert over_rest.status == 202 and (await over_rest.json())["message_id"] == a.message_id
    ws = await client.ws_connect("/opencode/ws")
    await ws.send_json({"id": "c1", "type": "send", "session_id": sid, "text": "once", "client_id": "tab1-0001"})
    ack = await asyncio.wait_for(ws.receive_json(), 5)
    assert ack["type"] == "ack" and ack["data"]["message_id"] == a.message_id, ack
    await ws.close()
    page, _ = await service.store.get_messages(sid)
    assert [(m.role, m.text()) for m in page] == [("user", "once"), ("assistant", "only reply")]
    assert len(provider.requests) == 1
    other = await service.sessions.send(sid, SendBody(text="another", client_id="tab1-0002"))
    assert other.message_id != a.message_id


async def test_a_repeat_of_a_send_that_failed_is_sent_anew(env, service, monkeypatch):
    provider, session = env
    provider.turns.extend([text_turn("never said: its message was not saved"), text_turn("the reply")])
    sid = await session()
    real = service.store.save_message
    failures = [StoreUnavailable("disk full")]

    async def fails_once(message: Message) -> None:
        if message.role == "user" and failures:
            raise failures.pop()
        await real(message)

    monkeypatch.setattr(service.store, "save_message", fails_once)
    with pytest.raises(StoreUnavailable):
        await service.sessions.send(sid, SendBody(text="try", client_id="tab1-0003"))
    again = await service.sessions.send(sid, SendBody(text="try", client_id="tab1-0003"))
    await asyncio.wait_for(service.sessions.wait_runs(sid, again.run_ids), 5)
    page, _ = await service.store.get_messages(sid)
    assert [(m.role, m.text()) for m in page] == [("user", "try"), ("assistant", "the reply")]


async def test_a_change_saving_as_the_session_is_deleted_does_not_bring_it_back(env, service, monkeypatch):
    """A patch, a remembered permission or the automatic title that was saving when a delete came
    was committed after the delete: the session was back, though the delete had answered."""
    _, session = env
    sid = await session()
    disk = asyncio.Event()
    slowed(monkeypatch, service.store, "save_session", lambda s: s.title == "patched", disk.wait)
    patching = asyncio.ensure_future(service.sessions.patch(sid, SessionPatch(title="patched")))
    await asyncio.sleep(0.01)
    deleting = asyncio.ensure_future(service.sessions.delete(sid))
    await asyncio.sleep(0.01)
    late = asyncio.ensure_future(service.sessions.remember_permission(sid, "queue_workflow", "allow"))
    await asyncio.sleep(0.01)
    disk.set()
    await asyncio.wait_for(deleting, 5)
    await asyncio.wait_for(patching, 5)  # it had begun its save: it finishes, then the delete goes
    with pytest.raises(NotFound):
        await asyncio.wait_for(late, 5)
    await service.store.flush()
    assert await service.store.get_session(sid) is None
    with pytest.raises(NotFound):
        await service.sessions.get(sid)


async def test_a_repeat_that_comes_as_its_run_ends_follows_no_run(env, service, monkeypatch):
    """A run says it ended (its final `run.status`) a loop turn before it is settled; a repeat's
    stream begun in between waited for that event, already gone (the SSE route follows
    `runs_to_follow()`)."""
    provider, session = env
    provider.turns.append(text_turn("the reply"))
    sid = await session()
    body = SendBody(text="once", client_id="tab1-0009")
    followed: list[asyncio.Task[set[str]]] = []
    real = service.bus.publish

    async def a_repeat_now() -> set[str]:
        sending = await service.sessions.start_send(sid, body)
        await sending.answer()
        return sending.runs_to_follow()

    def publish(session_id: str, type_: str, data: Any) -> int:
        seq = real(session_id, type_, data)
        if type_ == "run.status" and data.run.status == "completed" and not followed:
            followed.append(asyncio.ensure_future(a_repeat_now()))
        return seq

    monkeypatch.setattr(service.bus, "publish", publish)
    first = await service.sessions.start_send(sid, body)
    assert first.runs_to_follow() == {r.id for r in first.runs}
    await first.answer()
    await asyncio.wait_for(service.sessions.wait_runs(sid, [r.id for r in first.runs]), 5)
    assert await asyncio.wait_for(followed[0], 5) == set()


async def test_queued_prompts_are_read_with_their_own_replies(env, service):
    """B and C queue behind A; C is stored before B's reply (which starts after it): a later
    model still reads each prompt followed by its reply, and the node's "last reply" is C's."""
    provider, session = env
    gate = asyncio.Event()
    provider.turns.extend([held(gate), text_turn("B answer"), text_turn("C answer"), text_turn("D answer")])
    sid = await session()
    await service.sessions.send(sid, SendBody(text="A"))
    await service.sessions.send(sid, SendBody(text="B"))
    c = await service.sessions.send(sid, SendBody(text="C"))
    gate.set()
    await asyncio.wait_for(service.sessions.wait_runs(sid, c.run_ids), 5)
    assert (await service.sessions.last_reply(sid))[0] == "C answer"
    d = await service.sessions.send(sid, SendBody(text="D"))
    await asyncio.wait_for(service.sessions.wait_runs(sid, d.run_ids), 5)
    assert texts(provider.requests[3]) == [("user", "A"), ("assistant", "first reply"), ("user", "B"),
                                           ("assistant", "B answer"), ("user", "C"), ("assistant", "C answer"),
                                           ("user", "D")]
    page = await service.sessions.messages(sid, None, 50)
    replies = {m.text(): m.reply_to for m in page.messages if m.role == "assistant"}
    prompts = {m.id: m.text() for m in page.messages if m.role == "user"}
    assert {text: prompts[r] for text, r in replies.items()} == {
        "first reply": "A", "B answer": "B", "C answer": "C", "D answer": "D"}


async def test_a_snapshot_lists_messages_in_the_order_the_store_pages_them(env, service):
    """A panel pages back from the first message of its snapshot (`before`): if the two orders
    differ, a message falls between them and is never shown. Many quick sends, each queued
    behind replies that keep ending, are where they used to part."""
    provider, session = env
    provider.by_role = lambda request: text_turn("ok")
    sid = await session()
    sends = [asyncio.ensure_future(service.sessions.send(sid, SendBody(text=f"q{i}"))) for i in range(60)]
    await asyncio.wait_for(asyncio.gather(*sends), 10)
    await asyncio.wait_for(service.sessions.wait_idle(sid), 10)
    snapshot = [m["id"] for m in (await service.sessions.snapshot(sid))["messages"]]
    stored = [m.id for m in await service.sessions.all_messages(sid)]
    assert len(stored) == 120 and snapshot == stored[-len(snapshot):]
