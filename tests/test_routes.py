"""Every REST route on a bare aiohttp app: happy paths, bad input of each kind, SSE, restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from opencode_agent.core.protocol import SendBody
from opencode_agent.routes import ROUTES, SERVICE


async def j(resp: Any, status: int) -> Any:
    body = await resp.text()
    assert resp.status == status, body
    return json.loads(body) if body else None


async def test_version_and_health(client: TestClient) -> None:
    v = await j(await client.get("/opencode/version"), 200)
    assert v["protocol"] == 1 and v["name"] == "opencode" and {"ws", "send.client_id"} <= set(v["capabilities"])
    h = await j(await client.get("/opencode/health"), 200)
    assert h["status"] == "ok"


async def test_session_crud(client: TestClient) -> None:
    created = await j(await client.post("/opencode/sessions", json={"title": "T", "skills": ["echo"]}), 201)
    sid = created["id"]
    assert created["title"] == "T" and created["skills"] == ["echo"]
    listed = await j(await client.get("/opencode/sessions"), 200)
    assert [s["id"] for s in listed["sessions"]] == [sid]
    patched = await j(await client.patch(f"/opencode/sessions/{sid}", json={"title": "U", "model": "m1"}), 200)
    assert patched["title"] == "U" and patched["model"] == "m1" and patched["skills"] == ["echo"]
    assert (await j(await client.get(f"/opencode/sessions/{sid}"), 200))["title"] == "U"
    assert await j(await client.delete(f"/opencode/sessions/{sid}"), 200) == {"deleted": sid}
    err = await j(await client.get(f"/opencode/sessions/{sid}"), 404)
    assert err["error"]["code"] == "not_found"


async def test_the_list_of_sessions_is_most_recently_active_first(client: TestClient, service: Any) -> None:
    """The panel's list of chats: the one last written in comes first, the same after a restart.
    A message counts even when its reply reports no usage (the echo role; a provider error)."""
    async def order() -> list[str]:
        return [s["id"] for s in (await j(await client.get("/opencode/sessions"), 200))["sessions"]]

    a, b, c = [(await j(await client.post("/opencode/sessions", json={"skills": ["echo"], "title": t}), 201))["id"]
               for t in "abc"]
    assert await order() == [c, b, a]
    sent = await j(await client.post(f"/opencode/sessions/{a}/messages", json={"text": "still here"}), 202)
    await service.sessions.wait_runs(a, sent["run_ids"])
    assert await order() == [a, c, b]
    await j(await client.patch(f"/opencode/sessions/{b}", json={"title": "renamed"}), 200)
    assert await order() == [b, a, c]
    await service.store.flush()
    assert [s.id for s in await service.store.list_sessions()] == [b, a, c]


async def test_client_chosen_id_and_conflict(client: TestClient) -> None:
    await j(await client.post("/opencode/sessions", json={"id": "ses_mine"}), 201)
    err = await j(await client.post("/opencode/sessions", json={"id": "ses_mine"}), 409)
    assert err["error"]["code"] == "conflict"


async def test_send_and_page_messages(client: TestClient, service: Any) -> None:
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    ids = []
    for i in range(5):
        sent = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": f"m{i}"}), 202)
        ids.append(sent["message_id"])
        await service.sessions.wait_runs(sid, sent["run_ids"])
    page = await j(await client.get(f"/opencode/sessions/{sid}/messages?limit=4"), 200)
    assert [m["role"] for m in page["messages"]] == ["user", "assistant", "user", "assistant"]
    assert page["has_more"] is True
    older = await j(await client.get(f"/opencode/sessions/{sid}/messages?limit=100&before={page['next_before']}"), 200)
    assert len(older["messages"]) == 6 and older["has_more"] is False
    assert older["messages"][0]["id"] == ids[0]
    # the session got its title from the first message
    assert (await j(await client.get(f"/opencode/sessions/{sid}"), 200))["title"] == "m0"


async def test_a_page_before_a_message_is_exact(client: TestClient, service: Any) -> None:
    """`before` a message the server has just announced (not yet on disk) is that page, not a
    404; `before` another session's message is a 404, not an empty page that reads as the end."""
    a = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    b = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    first = await j(await client.post(f"/opencode/sessions/{a}/messages", json={"text": "one"}), 202)
    await service.sessions.wait_runs(a, first["run_ids"])
    other = await j(await client.post(f"/opencode/sessions/{b}/messages", json={"text": "elsewhere"}), 202)
    await service.sessions.wait_runs(b, other["run_ids"])
    service.store.max_delay = 10.0  # a reply's rows now wait in the queue until a flush
    second = await service.sessions.start_send(a, SendBody(text="two"))
    await second.answer()
    await service.sessions.wait_runs(a, [r.id for r in second.runs])
    reply = second.runs[0].message_id
    page = await j(await client.get(f"/opencode/sessions/{a}/messages?before={reply}"), 200)
    assert [m["parts"][0]["text"] for m in page["messages"]] == ["one", "one", "two"]
    err = await j(await client.get(f"/opencode/sessions/{a}/messages?before={other['message_id']}"), 404)
    assert err["error"]["code"] == "not_found"


async def test_send_streams_sse_with_accept_header(client: TestClient) -> None:
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    resp = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "sse works fine"},
                             headers={"Accept": "text/event-stream"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    text = await resp.text()
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[0].startswith("event: accepted")
    kinds = [line[7:] for block in events for line in block.splitlines() if line.startswith("event: ")]
    assert "message.delta" in kinds and kinds[-1] == "run.status"
    deltas = [json.loads(b.split("data: ", 1)[1])["data"]["text"] for b in events if "event: message.delta" in b]
    assert "".join(deltas) == "sse works fine"


async def test_a_repeated_send_over_sse_answers_and_ends(client: TestClient) -> None:
    """The repeat of a send that has ended waited on its stream for run ends that had come and gone."""
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    body = {"text": "once only", "client_id": "sse-repeat-1"}
    first = await client.post(f"/opencode/sessions/{sid}/messages", json=body, headers={"Accept": "text/event-stream"})
    assert "event: message.delta" in await asyncio.wait_for(first.text(), 5)
    again = await client.post(f"/opencode/sessions/{sid}/messages", json=body, headers={"Accept": "text/event-stream"})
    text = await asyncio.wait_for(again.text(), 5)
    assert text.startswith("event: accepted") and text.count("event:") == 1, text
    page = await j(await client.get(f"/opencode/sessions/{sid}/messages"), 200)
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]


async def test_events_sse_replays_after_seq(client: TestClient, service: Any) -> None:
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    sent = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "a b"}), 202)
    await service.sessions.wait_runs(sid, sent["run_ids"])
    last = service.bus.last_seq(sid)
    resp = await client.get(f"/opencode/sessions/{sid}/events", headers={"Last-Event-ID": str(last - 2)})
    assert resp.status == 200
    seqs = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("id: "):
            seqs.append(int(line[4:]))
        if len(seqs) == 2:
            break
    resp.close()
    assert seqs == [last - 1, last]


async def test_an_sse_stream_ends_when_its_session_is_deleted_or_the_server_stops(client: TestClient) -> None:
    """SSE streams outlived a deleted session (keep-alives forever) and held a stopping server
    for its whole shutdown timeout; WebSockets were already closed as going away."""
    gone = (await j(await client.post("/opencode/sessions", json={}), 201))["id"]
    kept = (await j(await client.post("/opencode/sessions", json={}), 201))["id"]
    deleted_stream = await client.get(f"/opencode/sessions/{gone}/events")
    stopped_stream = await client.get(f"/opencode/sessions/{kept}/events")
    await j(await client.delete(f"/opencode/sessions/{gone}"), 200)
    text = (await asyncio.wait_for(deleted_stream.read(), 5)).decode()
    assert text.rstrip().split("\n")[-2] == "event: session.deleted", text
    await client.app.shutdown()
    text = (await asyncio.wait_for(stopped_stream.read(), 5)).decode()
    assert text.endswith('event: dropped\ndata: {"reason": "server shutting down"}\n\n'), text


async def test_abort_route(client: TestClient, service: Any) -> None:
    service.sessions.deps.echo_delay = 0.05
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    sent = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "x " * 100}), 202)
    aborted = await j(await client.post(f"/opencode/sessions/{sid}/abort", json={}), 200)
    assert aborted["aborted"] == sent["run_ids"]
    [msg] = await service.sessions.wait_runs(sid, sent["run_ids"])
    assert msg.status == "aborted"
    err = await j(await client.post(f"/opencode/sessions/{sid}/abort", json={"run_id": "run_nope"}), 404)
    assert err["error"]["code"] == "not_found"


async def test_export_json_and_markdown(client: TestClient, service: Any) -> None:
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"], "title": "Export me"}), 201))["id"]
    sent = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "hello export"}), 202)
    await service.sessions.wait_runs(sid, sent["run_ids"])
    doc = await j(await client.get(f"/opencode/sessions/{sid}/export"), 200)
    assert doc["format"] == "opencode.session.v1" and len(doc["messages"]) == 2
    md = await client.get(f"/opencode/sessions/{sid}/export?format=md")
    text = await md.text()
    assert md.status == 200 and text.startswith("# Export me") and "hello export" in text
    await j(await client.get(f"/opencode/sessions/{sid}/export?format=pdf"), 400)


async def test_skills_route(client: TestClient) -> None:
    skills = await j(await client.get("/opencode/skills"), 200)
    ids = {s["id"] for s in skills["skills"]}
    assert {"assistant", "echo", "prompt-engineer", "workflow-doctor"} <= ids
    reloaded = await j(await client.post("/opencode/skills/reload", json={}), 200)
    assert {s["id"] for s in reloaded["skills"]} == ids


async def test_openapi_covers_every_route(client: TestClient) -> None:
    doc = await j(await client.get("/opencode/openapi.json"), 200)
    assert doc["openapi"].startswith("3.1")
    for r in ROUTES:
        path = r.path
        assert path in doc["paths"] and r.method.lower() in doc["paths"][path], (r.method, path)
    schema = await j(await client.get("/opencode/schema.json"), 200)
    assert {"Command", "Event", "Session", "Message"} <= set(schema["schemas"])
    # Every model of the protocol module, the provider, permission and token ones included.
    from opencode_agent.core import protocol

    assert {"ProviderProfile", "ProviderCreate", "PermissionSettings", "AuditList", "TokenInfo", "ImagePart",
            "ModelList"} <= set(schema["schemas"])
    assert {m.__name__ for m in protocol.public_models()} <= set(schema["schemas"])
    assert len(schema["schemas"]["Event"]["oneOf"]) == len(protocol.EVENT_DATA)  # the typed union of events


@pytest.mark.parametrize("method,path,kwargs,status,code", [
    ("POST", "/opencode/sessions", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
    ("POST", "/opencode/sessions", {"data": "title=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"),
    ("POST", "/opencode/sessions", {"json": {"title": 5}}, 400, "validation_error"),
    ("POST", "/opencode/sessions", {"json": {"skills": ["no-such-skill"]}}, 400, "unknown_skill"),
    ("POST", "/opencode/sessions", {"json": {"unknown_field": 1}}, 400, "validation_error"),
    ("POST", "/opencode/sessions", {"json": {"title": "x" * 1000}}, 400, "validation_error"),
    ("POST", "/opencode/sessions", {"json": {"provider": "nobody"}}, 400, "unknown_provider"),
    ("POST", "/opencode/sessions", {"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
    ("POST", "/opencode/sessions", {"data": "[" * 100000, "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
    ("POST", "/opencode/sessions", {"data": "x" * (3 << 20), "headers": {"Content-Type": "application/json"}}, 413, "payload_too_large"),
    ("GET", "/opencode/sessions/ses_nope", {}, 404, "not_found"),
    ("GET", "/opencode/sessions/..%2f..%2fetc/messages", {}, 404, "not_found"),
    ("GET", "/opencode/sessions/ses_nope/messages?limit=abc", {}, 400, "validation_error"),
    ("POST", "/opencode/sessions/ses_nope/messages", {"json": {"text": "hi"}}, 404, "not_found"),
    ("POST", "/opencode/sessions/ses_nope/abort", {"json": {}}, 404, "not_found"),
    ("GET", "/opencode/providers/nobody", {}, 404, "not_found"),
    ("PUT", "/opencode/providers/nobody/key", {"json": {"key": "k"}}, 404, "not_found"),
])
async def test_bad_input_gets_a_clear_error_and_writes_nothing(client: TestClient, service: Any, method: str,
                                                               path: str, kwargs: dict, status: int, code: str) -> None:
    resp = await client.request(method, path, **kwargs)
    err = await j(resp, status)
    assert err["error"]["code"] == code and err["error"]["message"]
    assert await service.store.list_sessions() == []


async def test_a_body_sent_in_pieces_is_read_whole(client: TestClient) -> None:
    """A large message from a slow client arrives in several reads; all of them make the body."""
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    body = json.dumps({"text": "lorem ipsum " * 6000}).encode()

    async def pieces() -> Any:
        for i in range(0, len(body), 16_384):
            yield body[i:i + 16_384]
            await asyncio.sleep(0.01)

    resp = await client.post(f"/opencode/sessions/{sid}/messages", data=pieces(),
                             headers={"Content-Type": "application/json"})
    sent = await j(resp, 202)
    page = await j(await client.get(f"/opencode/sessions/{sid}/messages"), 200)
    [user] = [m for m in page["messages"] if m["id"] == sent["message_id"]]
    assert user["parts"][0]["text"] == "lorem ipsum " * 6000
    too_big = b'{"text": "' + b"x" * (2 << 20) + b'"}'

    async def big_pieces() -> Any:
        for i in range(0, len(too_big), 1 << 18):
            yield too_big[i:i + (1 << 18)]

    resp = await client.post(f"/opencode/sessions/{sid}/messages", data=big_pieces(),
                             headers={"Content-Type": "application/json"})
    assert (await j(resp, 413))["error"]["code"] == "payload_too_large"


async def test_empty_message_is_rejected(client: TestClient) -> None:
    sid = (await j(await client.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    err = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "   "}), 400)
    assert err["error"]["code"] == "empty_message"
    err = await j(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "hi", "skills": ["nope"]}), 400)
    assert err["error"]["code"] == "unknown_role"


async def test_restart_on_the_same_data_dir_restores_sessions(aiohttp_client: Any, make_app: Any) -> None:
    first = await aiohttp_client(make_app())
    sid = (await j(await first.post("/opencode/sessions", json={"skills": ["echo"], "title": "Keep"}), 201))["id"]

    sent = await j(await first.post(f"/opencode/sessions/{sid}/messages", json={"text": "remember me"}), 202)
    await first.app[SERVICE].sessions.wait_runs(sid, sent["run_ids"])
    last_seq = first.app[SERVICE].bus.last_seq(sid)
    await first.close()
    second = await aiohttp_client(make_app())
    session = await j(await second.get(f"/opencode/sessions/{sid}"), 200)
    assert session["title"] == "Keep"
    page = await j(await second.get(f"/opencode/sessions/{sid}/messages"), 200)
    assert [m["parts"][0]["text"] for m in page["messages"]] == ["remember me", "remember me"]
    assert all(m["status"] == "completed" for m in page["messages"])
    # seq continues after a restart: nothing is numbered twice
    sent = await j(await second.post(f"/opencode/sessions/{sid}/messages", json={"text": "again"}), 202)
    await second.app[SERVICE].sessions.wait_runs(sid, sent["run_ids"])
    assert second.app[SERVICE].bus.last_seq(sid) > last_seq


async def test_a_send_repeated_after_a_restart_is_answered_not_sent_again(aiohttp_client: Any, make_app: Any) -> None:
    """The panel keeps a send until its answer comes and repeats it under the same `client_id`
    when it reconnects. Saved just before a restart, with the answer lost, it used to be sent a
    second time (a second message and a second bill): the server forgot the id with its memory."""
    first = await aiohttp_client(make_app())
    sid = (await j(await first.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    body = {"text": "only once", "client_id": "tab1-0042"}
    sent = await j(await first.post(f"/opencode/sessions/{sid}/messages", json=body), 202)
    await first.app[SERVICE].sessions.wait_runs(sid, sent["run_ids"])
    await first.close()
    second = await aiohttp_client(make_app())
    again = await j(await second.post(f"/opencode/sessions/{sid}/messages", json=body), 202)
    assert again == {**sent, "queued": False}
    ws = await second.ws_connect("/opencode/ws")
    await ws.send_json({"id": "c1", "type": "send", "session_id": sid, **body})
    ack = await asyncio.wait_for(ws.receive_json(), 5)
    assert ack["type"] == "ack" and ack["data"]["message_id"] == sent["message_id"], ack
    await ws.close()
    page = await j(await second.get(f"/opencode/sessions/{sid}/messages"), 200)
    assert [(m["role"], m["parts"][0]["text"]) for m in page["messages"]] == [("user", "only once"), ("assistant", "only once")]
    # Another id is another send.
    other = await j(await second.post(f"/opencode/sessions/{sid}/messages", json={**body, "client_id": "tab1-0043"}), 202)
    assert other["message_id"] != sent["message_id"]


async def test_a_sessions_last_seq_is_where_a_client_that_has_it_resumes(aiohttp_client: Any, make_app: Any
                                                                         ) -> None:
    """`last_seq` was always 0: a client that joined with it replayed everything or got a resync."""
    first = await aiohttp_client(make_app())
    service = first.app[SERVICE]
    sid = (await j(await first.post("/opencode/sessions", json={"skills": ["echo"]}), 201))["id"]
    sent = await j(await first.post(f"/opencode/sessions/{sid}/messages", json={"text": "a b"}), 202)
    await service.sessions.wait_runs(sid, sent["run_ids"])
    last = service.bus.last_seq(sid)
    assert last > 0
    assert (await j(await first.get(f"/opencode/sessions/{sid}"), 200))["last_seq"] == last
    listed = await j(await first.get("/opencode/sessions"), 200)
    assert [s["last_seq"] for s in listed["sessions"] if s["id"] == sid] == [last]
    patched = await j(await first.patch(f"/opencode/sessions/{sid}", json={"title": "Numbered"}), 200)
    assert patched["last_seq"] == service.bus.last_seq(sid) == last + 1  # its session.updated
    state = await service.sessions.snapshot(sid)
    assert state["session"]["last_seq"] == last + 1
    await service.store.flush()
    await first.close()

    second = await aiohttp_client(make_app())  # the same data dir, a new process's numbering
    listed = await j(await second.get("/opencode/sessions"), 200)
    assert [s["last_seq"] for s in listed["sessions"] if s["id"] == sid] == [0]  # not opened yet
    resume = (await j(await second.get(f"/opencode/sessions/{sid}"), 200))["last_seq"]
    assert resume > last + 1
    listed = await j(await second.get("/opencode/sessions"), 200)
    assert [s["last_seq"] for s in listed["sessions"] if s["id"] == sid] == [resume]
    resp = await second.get(f"/opencode/sessions/{sid}/events", params={"after_seq": str(resume)})
    sent = await j(await second.post(f"/opencode/sessions/{sid}/messages", json={"text": "c"}), 202)
    first_event = None
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            first_event = first_event or line[7:]
        if line.startswith("id: "):
            assert int(line[4:]) == resume + 1  # no resync: the listed seq is exactly where it goes on
            break
    resp.close()
    assert first_event != "session.resync"
    await second.app[SERVICE].sessions.wait_runs(sid, sent["run_ids"])
    assert (await j(await second.get(f"/opencode/sessions/{sid}"), 200))["last_seq"] == \
        second.app[SERVICE].bus.last_seq(sid)


async def test_files_route_serves_uploaded_images(client: TestClient, service: Any) -> None:
    from opencode_agent.core.images import save_upload

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    part = save_upload(service.data_dir, png)
    resp = await client.get(f"/opencode/files?filename={part.filename}&type=input&source=upload")
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert await resp.read() == png
    missing = await j(await client.get("/opencode/files?filename=nope.png&source=upload"), 404)
    assert missing["error"]["code"] == "not_found"
    sneaky = await client.get("/opencode/files?filename=../secrets.json&source=upload")
    assert sneaky.status in (400, 404)
    assert "keys" not in await sneaky.text()
    no_comfy = await j(await client.get("/opencode/files?filename=a.png&source=comfyui"), 400)
    assert no_comfy["error"]["code"] == "image_unavailable"
    # A NUL byte in a name (found by the full schemathesis run): a clear 400, not a 500.
    for query in ("filename=a%00.png&source=upload", "filename=a.png&subfolder=x%00&source=comfyui"):
        nul = await j(await client.get(f"/opencode/files?{query}"), 400)
        assert nul["error"]["code"] == "validation_error"


async def test_token_read_and_rotate_from_this_machine(client: TestClient) -> None:
    first = await j(await client.get("/opencode/token"), 200)
    assert first["token"] == "test-token" and first["header"] == "X-Opencode-Token"
    rotated = await j(await client.post("/opencode/token/rotate", json={}), 200)
    assert rotated["token"] != "test-token" and len(rotated["token"]) >= 32
    # A remote caller (non-loopback Host) needs the new token, and the old one no longer works.
    remote = {"Host": "opencode.example:8188"}
    assert (await client.get("/opencode/sessions", headers={**remote, "X-Opencode-Token": "test-token"})).status == 401
    ok = await client.get("/opencode/sessions", headers={**remote, "X-Opencode-Token": rotated["token"]})
    assert ok.status == 200


async def test_ids_skills_permissions_and_kinds_that_could_not_work_are_refused(client: TestClient) -> None:
    """Each of these was stored and then could not work: a session named `..` that no URL can
    reach, a role listed twice, a permission rule with a 10 kB name, a provider of kind `echo`."""
    for bad_id in (".", "..", "...", "x" * 65):
        await j(await client.post("/opencode/sessions", json={"id": bad_id}), 400)
    sid = (await j(await client.post("/opencode/sessions", json={"id": ".hidden.", "skills": ["echo", "echo"]}), 201))["id"]
    assert (await j(await client.get(f"/opencode/sessions/{sid}"), 200))["skills"] == ["echo"]
    patched = await j(await client.patch(f"/opencode/sessions/{sid}", json={"skills": ["assistant", "echo", "assistant"]}), 200)
    assert patched["skills"] == ["assistant", "echo"]
    await j(await client.patch(f"/opencode/sessions/{sid}", json={"permissions": {"x" * 10_000: "allow"}}), 400)
    await j(await client.patch(f"/opencode/sessions/{sid}", json={"permissions": {f"t{i}": "allow" for i in range(201)}}), 400)
    await j(await client.post("/opencode/providers", json={"name": "e", "kind": "echo"}), 400)
