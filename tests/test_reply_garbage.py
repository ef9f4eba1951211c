"""A finished reply leaves no reference cycle behind: its objects go when their last reference does.

Why it matters: an object in a cycle outlives its use until the garbage collector runs, so every
reply that leaves one grows the young generations, makes collections more frequent, and promotes
the whole reply (its response, decoder, run, messages) into the old generation, whose full
collections pause the one event loop that every stream shares. One such cycle (the stall
watchdog and the inline reader pointing at each other) kept 68 objects a reply alive until a
collection, at every reply of every dialect.

Each test runs real replies (a real app, a real fake upstream on loopback, real WebSockets) with
the collector off, then collects with `DEBUG_SAVEALL` and names any Opencode object that was
freed only as cyclic garbage.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from typing import Any, AsyncIterator

import pytest

from fakes.llm_servers import (  # noqa: F401 - fixture
    Fail, FakeLLMServer, FakeToolCall, Reply, Stream, anthropic_events, fake_llm, ollama_lines, openai_chunks, sse)
from wsclient import WsClient, run_final

DIALECTS = {"openai": "/v1", "anthropic": "/anthropic", "ollama": ""}
ENCODINGS = {"openai": (openai_chunks, "text/event-stream"), "anthropic": (anthropic_events, "text/event-stream"),
             "ollama": (ollama_lines, "application/x-ndjson")}


def paced(kind: str, said: Reply) -> Stream:
    """`said` in `kind`'s wire format, a write every 5 ms: the body is read while it streams
    (the inline reader's path), not found whole in the first read."""
    encode, content_type = ENCODINGS[kind]
    return Stream(encode(said), content_type, pause=0.005)


async def chat(client: Any, fake_llm: FakeLLMServer, kind: str, skills: list[str] | None = None) -> tuple[str, WsClient]:
    """A session on a `kind` profile of the fake server (one attempt: a failure is final), and a
    WebSocket joined to it."""
    name = f"p-{kind}"
    existing = await client.get(f"/opencode/providers/{name}")
    if existing.status == 404:
        created = await client.post("/opencode/providers", json={
            "name": name, "kind": kind, "base_url": fake_llm.url + DIALECTS[kind], "default_model": "m",
            "extra": {"max_attempts": 1}})
        assert created.status == 201, await created.text()
    made = await client.post("/opencode/sessions", json={"skills": skills or ["assistant"], "provider": name})
    assert made.status == 201, await made.text()
    sid = (await made.json())["id"]
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid, panel=True)
    return sid, ws


async def reply(ws: WsClient, sid: str, text: str) -> dict[str, Any]:
    sent = await ws.command("send", session_id=sid, text=text)
    return (await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"]


@pytest.fixture
async def no_collector() -> AsyncIterator[list[Any]]:
    """The collector off for the test's body; yields a list that, after the body, the test reads
    through `cyclic_opencode_garbage`."""
    gc.collect()
    gc.disable()
    try:
        yield []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_opencode_garbage() -> Counter[str]:
    """Collect everything now, keeping what only the collector could free; count Opencode's."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                    if type(o).__module__.startswith("opencode_agent"))
    gc.garbage.clear()
    return found


def assert_no_cycles() -> None:
    garbage = cyclic_opencode_garbage()
    assert not garbage, f"freed only by the garbage collector: {dict(garbage)}"


@pytest.mark.parametrize("kind", sorted(DIALECTS))
async def test_a_streamed_reply_leaves_no_cycle(client: Any, fake_llm: FakeLLMServer, no_collector: Any,
                                                kind: str) -> None:
    sid, ws = await chat(client, fake_llm, kind)
    fake_llm.push(paced(kind, Reply("warm up")))  # caches filled, pools opened: what stays is not garbage
    assert (await reply(ws, sid, "first"))["status"] == "completed"
    cyclic_opencode_garbage()
    fake_llm.push(*(paced(kind, Reply(f"answer number {n}, in a few words")) for n in range(3)))
    for n in range(3):
        assert (await reply(ws, sid, f"question {n}"))["status"] == "completed"
    assert_no_cycles()


async def test_tool_rounds_failures_and_stops_leave_no_cycle(client: Any, fake_llm: FakeLLMServer,
                                                             no_collector: Any) -> None:
    sid, ws = await chat(client, fake_llm, "openai", ["prompt-engineer"])
    fake_llm.push(paced("openai", Reply("warm up")))
    assert (await reply(ws, sid, "first"))["status"] == "completed"
    cyclic_opencode_garbage()

    # A tool round (the role's reference reader), then the answer.
    call = FakeToolCall("read_skill_reference", {"skill": "prompt-engineer", "path": "x.md"}, id="c1")
    fake_llm.push(paced("openai", Reply(tool_calls=[call])), paced("openai", Reply("Here is your answer.")))
    assert (await reply(ws, sid, "use a tool"))["status"] == "completed"
    # The upstream refuses.
    fake_llm.push(Fail(500, {"error": {"message": "boom", "type": "server_error"}}))
    assert (await reply(ws, sid, "fail"))["status"] == "error"
    # The stream stalls after a token and the person stops it.
    token = sse({"choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}]})
    fake_llm.push(Stream([token], stall_after=1))
    sent = await ws.command("send", session_id=sid, text="then stop")
    await ws.until(lambda e: e["type"] == "message.delta" and e["data"]["run_id"] == sent["data"]["run_id"])
    await ws.command("abort", session_id=sid)
    stopped = (await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"]
    assert stopped["status"] == "aborted", json.dumps(stopped)
    assert_no_cycles()


async def test_sockets_streams_and_routes_leave_no_cycle(client: Any, fake_llm: FakeLLMServer, no_collector: Any) -> None:
    sid, ws = await chat(client, fake_llm, "openai")
    fake_llm.push(paced("openai", Reply("warm up")))
    assert (await reply(ws, sid, "first"))["status"] == "completed"
    await ws.ws.close()
    cyclic_opencode_garbage()

    for n in range(3):
        # A panel's life: connect, follow the chat and the list, leave, close.
        other = WsClient(await client.ws_connect("/opencode/ws"))
        await other.command("join", session_id=sid, panel=True, after_seq=0)
        await other.command("sessions.join")
        await other.command("sessions.leave")
        await other.command("leave", session_id=sid)
        await other.ws.close()
        # A script's calls: list, read, page, rename, an error, an SSE reply.
        for path in ("/opencode/sessions", f"/opencode/sessions/{sid}", f"/opencode/sessions/{sid}/messages?limit=5",
                     "/opencode/providers", "/opencode/skills", "/opencode/sessions/ses_nope"):
            assert (await client.get(path)).status in (200, 404)
        assert (await client.patch(f"/opencode/sessions/{sid}", json={"title": f"renamed {n}"})).status == 200
        refused = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "@nobody hi", "client_id": f"c{n}"})
        assert refused.status == 400, await refused.text()
        fake_llm.push(paced("openai", Reply(f"over SSE {n}")))
        streamed = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": f"sse {n}"},
                                     headers={"Accept": "text/event-stream"})
        assert streamed.status == 200 and "event: run.status" in await streamed.text()
    assert_no_cycles()
