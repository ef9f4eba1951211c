"""Provider faults end to end: through the routes, the session manager and the agent loop.

The provider unit tests (`test_providers_*.py`) prove each dialect maps a fault to the right
`ProviderError`; here the whole service meets the fault (llmock on loopback for OpenAI and
Anthropic, a closed port for a refused connection) and the outcome is what a person sees: the run
is retried to completion, or it ends as `error` with a message that says what happened; no run is
ever left `working`; and the event loop keeps serving other sockets and sessions meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

import pytest

from opencode_agent.core.skills import Skill
from opencode_agent.core.tools import ToolContext, tool
from opencode_agent.tests.fakes.llm_servers import FakeToolCall, Reply, closed_port, fake_llm  # noqa: F401  (fixture)
from wsclient import WsClient, run_final

KEY = "sk-fault-0123456789abcdefghijKEY"
READ_TIMEOUT = 0.5
STALL_TIMEOUT = 1.5  # the read timeout of the loop-blocking test: far above scheduling noise


class LoopLag:
    """How late a 5 ms ticker wakes up on this loop: the service's loop, in these tests."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.005)
            self.samples.append(loop.time() - t0 - 0.005)

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)


@pytest.fixture
async def chat(client: Any) -> Callable[..., Any]:
    """`await chat(kind, base_url, extra=...)` → (ws, session id) for a session on a fresh profile."""
    counter = iter(range(1000))

    async def make(kind: str, base_url: str, *, skills: tuple[str, ...] = (), **extra: Any) -> tuple[WsClient, str]:
        name = f"p{next(counter)}"
        body = {"name": name, "kind": kind, "base_url": base_url, "default_model": "model-x",
                "extra": {"max_attempts": 3, "read_timeout": READ_TIMEOUT, **extra}}
        r = await client.post("/opencode/providers", json=body)
        assert r.status == 201, await r.text()
        assert (await client.put(f"/opencode/providers/{name}/key", json={"key": KEY})).status == 200
        r = await client.post("/opencode/sessions", json={"provider": name, "skills": list(skills)})
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]
        ws = WsClient(await client.ws_connect("/opencode/ws"))
        await ws.command("join", session_id=sid)
        return ws, sid

    return make


# Where each dialect lives on the `FakeLLMServer`.
FAKE_PATHS = {"openai": "/v1", "anthropic": "/anthropic", "ollama": ""}


async def ask(ws: WsClient, sid: str, text: str = "hello?") -> dict[str, Any]:
    sent = await ws.command("send", session_id=sid, text=text)
    final = await ws.until(run_final(sent["data"]["run_id"]), timeout=20)
    message = [e for e in ws.of_type("message.completed")
               if e["data"]["message"]["run_id"] == sent["data"]["run_id"]][-1]["data"]["message"]
    return {"run": final["data"]["run"], "message": message}


async def no_run_working(client: Any, sid: str) -> None:
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid)
    state = ws.of_type("session.state")[0]["data"]
    assert state["runs"] == [], state["runs"]
    assert all(m["status"] not in ("streaming", "queued") for m in state["messages"])
    r = await client.get(f"/opencode/sessions/{sid}/messages")
    assert all(m["status"] not in ("streaming", "queued") for m in (await r.json())["messages"])
    await ws.ws.close()


DIALECTS = [("openai", "openai"), ("anthropic", "anthropic")]


@pytest.fixture(params=DIALECTS, ids=[d[0] for d in DIALECTS])
def dialect(request: Any, llmock: Any) -> tuple[str, str]:
    kind, path = request.param
    llmock.tool_mode("off")
    return kind, llmock.base_url(path)


# --------------------------------------------------------------------------- retried to completion


@pytest.mark.parametrize("fault", ["408", "409", "429", "529", "500", "503"])
async def test_transient_errors_are_retried_to_completion(chat: Any, llmock: Any, client: Any,
                                                          dialect: tuple[str, str], fault: str) -> None:
    ws, sid = await chat(*dialect)
    llmock.fail(int(fault), retry_after=0.05).reply("fine after all")
    out = await ask(ws, sid)
    assert out["run"]["status"] == "completed", out
    assert "fine after all" in "".join(p.get("text", "") for p in out["message"]["parts"])
    assert [r.status for r in llmock.requests] == [int(fault), 200]
    # The retry is a line in the session's debug drawer, with its run.
    retries = [e["data"] for e in ws.of_type("log") if "; retry 1/2 in " in e["data"]["message"]]
    assert len(retries) == 1 and retries[0]["level"] == "warning" and retries[0]["run_id"] == out["run"]["id"]
    await no_run_working(client, sid)


# --------------------------------------------------------------------------- surfaced as a clear error


@pytest.mark.parametrize("fault,words", [
    ("429-forever", ["429"]),
    ("500-forever", ["500"]),
    ("401", ["401"]),
    ("stall", ["stalled"]),
    ("truncate", ["ended before", "stream"]),
    ("corrupt", ["malformed"]),
    ("disconnect", ["connection lost", "ended before"]),
])
async def test_faults_end_the_run_with_a_clear_error(chat: Any, llmock: Any, client: Any,
                                                     dialect: tuple[str, str], fault: str, words: list[str]) -> None:
    ws, sid = await chat(*dialect)
    if fault == "429-forever":
        llmock.fail(429, retry_after=0.01, times=None)
    elif fault == "500-forever":
        llmock.fail(500, retry_after=0.01, times=None)
    elif fault == "401":
        llmock.fail(401, message="Incorrect API key provided")
    elif fault == "stall":
        llmock.reply("one two three four five six").stall(after_chunks=2, seconds=READ_TIMEOUT * 4)
    elif fault == "truncate":
        llmock.reply("one two three four five six").truncate(after_chunks=3)
    elif fault == "corrupt":
        llmock.reply("one two three four five six").corrupt(after_chunks=2)
    else:
        llmock.reply("one two three four five six").disconnect(after_chunks=2)
    out = await ask(ws, sid)
    assert out["run"]["status"] == "error", out
    error = out["message"]["error"] or ""
    assert out["run"]["error"] == error
    assert any(w in error for w in words), error
    assert error.startswith("p"), "the message names the provider profile"
    assert KEY not in error
    await no_run_working(client, sid)
    # The session is not stuck: the next message gets an answer.
    llmock.reset().tool_mode("off").reply("recovered")
    again = await ask(ws, sid, "again?")
    assert again["run"]["status"] == "completed"


async def test_refused_connection_is_retried_then_reported(chat: Any, client: Any) -> None:
    ws, sid = await chat("openai", f"http://127.0.0.1:{closed_port()}/v1", max_attempts=2)
    out = await ask(ws, sid)
    assert out["run"]["status"] == "error"
    assert "cannot connect" in out["message"]["error"]
    await no_run_working(client, sid)


async def test_the_loop_never_blocks_during_a_stall(chat: Any, llmock: Any, client: Any) -> None:
    """While one reply hangs on a silent upstream, other sockets and sessions are served at once."""
    llmock.tool_mode("off")
    ws, sid = await chat("openai", llmock.base_url("openai"), read_timeout=STALL_TIMEOUT)
    llmock.reply("a b c d e f g h").stall(after_chunks=2, seconds=STALL_TIMEOUT * 2)
    r = await client.post("/opencode/sessions", json={"skills": ["echo"]})
    echo_sid = (await r.json())["id"]
    other = WsClient(await client.ws_connect("/opencode/ws"))
    await other.command("join", session_id=echo_sid)
    with LoopLag() as lag:
        sent = await ws.command("send", session_id=sid, text="will stall")
        await ws.until(lambda e: e["type"] == "message.delta")
        t0 = time.monotonic()
        for _ in range(20):
            assert (await other.command("ping"))["type"] == "ack"
        echoed = await other.command("send", session_id=echo_sid, text="served meanwhile")
        done = await other.until(run_final(echoed["data"]["run_id"]))
        served_in = time.monotonic() - t0
        assert done["data"]["run"]["status"] == "completed"
        # Still stalled when the other session finished: it was served while this one waited.
        assert not [e for e in ws.events if run_final(sent["data"]["run_id"])(e)]
        final = await ws.until(run_final(sent["data"]["run_id"]), timeout=10)
    assert final["data"]["run"]["status"] == "error"
    assert served_in < STALL_TIMEOUT
    # A loop blocked on the silent upstream would lag by the whole read timeout; what is left is
    # scheduling noise (a garbage collection of the test process, other processes on the machine).
    assert lag.worst < STALL_TIMEOUT * 0.3, f"the loop stalled for {lag.worst * 1000:.0f} ms"
    print(f"\nstall: another session served in {served_in * 1000:.0f} ms; worst loop lag {lag.worst * 1000:.1f} ms")
    await no_run_working(client, sid)


async def test_abort_during_a_stall_ends_at_once(chat: Any, llmock: Any, client: Any) -> None:
    llmock.tool_mode("off")
    ws, sid = await chat("openai", llmock.base_url("openai"), read_timeout=30)
    llmock.reply("a b c d e f").stall(after_chunks=2, seconds=3)
    sent = await ws.command("send", session_id=sid, text="hang")
    await ws.until(lambda e: e["type"] == "message.delta")
    t0 = time.monotonic()
    assert (await ws.command("abort", session_id=sid))["data"]["aborted"] == [sent["data"]["run_id"]]
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "aborted"
    assert time.monotonic() - t0 < 1.0
    await no_run_working(client, sid)


async def test_many_sessions_fail_at_once_and_all_end(chat: Any, llmock: Any, client: Any) -> None:
    """Twenty runs against a provider that is down: every one ends as an error, none hangs."""
    llmock.tool_mode("off").fail(503, retry_after=0.01, times=None)
    pairs = [await chat("openai", llmock.base_url("openai"), max_attempts=2) for _ in range(20)]
    sent = [await ws.command("send", session_id=sid, text="anyone?") for ws, sid in pairs]
    finals = await asyncio.gather(*(ws.until(run_final(s["data"]["run_id"]), timeout=20)
                                    for (ws, _), s in zip(pairs, sent)))
    assert {f["data"]["run"]["status"] for f in finals} == {"error"}
    for _, sid in pairs:
        await no_run_working(client, sid)


# --------------------------------------------------------------------------- replies that did not end on their own


@pytest.mark.parametrize("kind,finish,note", [
    ("anthropic", "max_tokens", "_(cut off: the reply reached its length limit)_"),
    ("anthropic", "refusal", "_(stopped by the provider: it refused or filtered this reply)_"),
    ("openai", "length", "_(cut off: the reply reached its length limit)_"),
    ("openai", "content_filter", "_(stopped by the provider: it refused or filtered this reply)_"),
    ("ollama", "length", "_(cut off: the reply reached its length limit)_"),
])
async def test_a_reply_cut_short_says_so(chat: Any, fake_llm: Any, kind: str, finish: str, note: str) -> None:
    """A reply stopped at its token limit, or by the provider's refusal or filter, is kept, but
    ends with a note (and a warning in the session's log) rather than passing for a whole answer."""
    ws, sid = await chat(kind, fake_llm.url + FAKE_PATHS[kind])
    fake_llm.push(Reply(text="Step 1: open the", finish=finish))
    out = await ask(ws, sid, "write a long guide")
    assert out["run"]["status"] == "completed" and out["run"]["error"] is None
    assert out["message"]["parts"] == [{"type": "text", "text": f"Step 1: open the\n\n{note}"}]
    warned = [e["data"] for e in ws.of_type("log") if e["data"]["level"] == "warning"]
    assert len(warned) == 1 and warned[0]["run_id"] == out["run"]["id"], warned


async def test_an_openai_refusal_is_the_reply_and_says_so(chat: Any, fake_llm: Any) -> None:
    """A reply that is a `refusal` (no `content`) shows the model's words, not an empty answer."""
    ws, sid = await chat("openai", fake_llm.url + FAKE_PATHS["openai"])
    fake_llm.push(Reply(refusal="I can't help with that."))
    out = await ask(ws, sid, "do something bad")
    assert out["run"]["status"] == "completed" and out["message"]["parts"] == [{"type": "text", "text": (
        "I can't help with that.\n\n_(stopped by the provider: it refused or filtered this reply)_")}]


# --------------------------------------------------------------------------- tools gone mid-session


@tool(permission="read")
async def lookup(ctx: ToolContext, query: str) -> str:
    """Look something up."""
    return f"found {query}"


LOOKUP = Skill(id="lookup-tools", name="Lookup", description="a tool", kind="tools", instructions="", tools=[lookup])


@pytest.mark.parametrize("how", ["skill deselected", "model without tools"])
@pytest.mark.parametrize("kind", sorted(FAKE_PATHS))
async def test_a_session_that_used_tools_goes_on_without_them(chat: Any, fake_llm: Any, client: Any, service: Any,
                                                              kind: str, how: str) -> None:
    """Once its tools are gone, a session's earlier calls and results reach the model as text: a
    request without tools that holds tool blocks is a 400 at Anthropic (the fake refuses it the
    same way), and some OpenAI-compatible servers refuse tool messages too."""
    service.skills.register(LOOKUP, replace=True)
    ws, sid = await chat(kind, fake_llm.url + FAKE_PATHS[kind], skills=("lookup-tools",))
    fake_llm.push(Reply(tool_calls=[FakeToolCall("lookup", {"query": "ksampler"}, id="toolu_1")]),
                  Reply(text="It samples."), Reply(text="Still here."))
    assert (await ask(ws, sid, "what is ksampler?"))["run"]["status"] == "completed"
    assert fake_llm.requests[-1].body.get("tools")
    if how == "skill deselected":
        r = await client.patch(f"/opencode/sessions/{sid}", json={"skills": []})
    else:
        name = (await (await client.get(f"/opencode/sessions/{sid}")).json())["provider"]
        r = await client.patch(f"/opencode/providers/{name}", json={"models": {"model-x": {"tools": False}}})
    assert r.status == 200, await r.text()
    out = await ask(ws, sid, "and now?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    body = fake_llm.requests[-1].body
    assert "tools" not in body
    sent = json.dumps(body["messages"])
    for marker in ('"tool_use"', '"tool_result"', '"tool_calls"', '"role": "tool"', '"tool_call_id"'):
        assert marker not in sent, marker
    assert '[called lookup({\\"query\\": \\"ksampler\\"})]' in sent and "[lookup returned: found ksampler]" in sent


# --------------------------------------------------------------------------- thinking models


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_thinking_models_tool_turns_keep_their_reasoning(chat: Any, fake_llm: Any, client: Any, service: Any,
                                                                 kind: str) -> None:
    """DeepSeek's thinking mode (and Anthropic's extended thinking) refuse a request whose tool-call
    turn lacks its reasoning, and every later one with it: the reasoning goes back with the turn in
    the run's next request, in the next message's, and once the session is read back from the
    store; it is never reply text, and the reply without calls sends none back."""
    service.skills.register(LOOKUP, replace=True)
    fake_llm.thinking = True
    ws, sid = await chat(kind, fake_llm.url + FAKE_PATHS[kind], skills=("lookup-tools",))
    call = FakeToolCall("lookup", {"query": "ksampler"}, id="toolu_1")
    fake_llm.push(Reply(reasoning="I should look it up.", tool_calls=[call]),
                  Reply(reasoning="Found it.", text="It samples."), Reply(reasoning="Easy.", text="Yes."),
                  Reply(reasoning="Still easy.", text="Still yes."))
    out = await ask(ws, sid, "what is ksampler?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    assert "".join(p.get("text", "") for p in out["message"]["parts"]) == "It samples."
    out = await ask(ws, sid, "sure?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    ws = await rejoin_from_the_store(ws, client, service, sid)
    out = await ask(ws, sid, "and now?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    asked = [r for r in fake_llm.requests if r.method == "POST"]
    assert len(asked) == 4  # none refused
    for request in asked[1:]:
        turns = [m for m in request.body["messages"] if m["role"] == "assistant"]
        if kind == "openai":
            assert turns[0]["reasoning_content"] == "I should look it up."
            assert all("reasoning_content" not in m for m in turns[1:])
        else:
            assert turns[0]["content"][0] == {"type": "thinking", "thinking": "I should look it up.",
                                              "signature": "EqQBCgIYAhIM"}
            assert all(b["type"] == "text" for m in turns[1:] for b in m["content"])


# --------------------------------------------------------------------------- words between calls


async def rejoin_from_the_store(ws: WsClient, client: Any, service: Any, sid: str) -> WsClient:
    """Close `ws`; once nobody has joined the idle session it is forgotten (the next use reads it
    from the store); a new socket joins it again."""
    await ws.ws.close()
    for _ in range(500):
        if service.sessions.evict_idle(0):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the session was never unloaded")
    again = WsClient(await client.ws_connect("/opencode/ws"))
    await again.command("join", session_id=sid)
    return again


def _said(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """A reply's parts, or an Anthropic turn's content blocks, as (type, text or call id)."""
    return [(b["type"], b.get("text") or b.get("id") or b.get("tool_call_id") or "") for b in items]


def _live(ws: WsClient, run_id: str) -> list[tuple[str, str]]:
    """What a panel heard of a run while it streamed: its text (a network read's pieces joined) and
    each call as it was announced, with its status then."""
    out: list[tuple[str, str]] = []
    for e in ws.events:
        if e["type"] not in ("message.delta", "tool.started") or e["data"]["run_id"] != run_id:
            continue
        if e["type"] == "tool.started":
            out.append(("call", f"{e['data']['call']['id']} {e['data']['call']['status']}"))
        elif out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + e["data"]["text"])
        else:
            out.append(("text", e["data"]["text"]))
    return out


async def test_words_between_tool_calls_stay_where_they_streamed(chat: Any, fake_llm: Any, client: Any,
                                                                 service: Any) -> None:
    """An Anthropic turn may stream text, a call, more text, another call. The reply keeps that
    order: in its parts (what the panel shows, as it streams and once stored), in the run's next
    request, and in a later message's history read back from the store. Sent back with the words
    after the first call moved ahead of it, the model reads a turn it did not write."""
    service.skills.register(LOOKUP, replace=True)
    ws, sid = await chat("anthropic", fake_llm.url + FAKE_PATHS["anthropic"], skills=("lookup-tools",))
    fake_llm.push(Reply(text="First ksampler.", tool_calls=[
                      FakeToolCall("lookup", {"query": "ksampler"}, id="toolu_1"),
                      FakeToolCall("lookup", {"query": "vae"}, id="toolu_2", text="Then vae.")]),
                  Reply(text="Both found."), Reply(text="Yes."))
    turn = [("text", "First ksampler."), ("tool_call", "toolu_1"), ("text", "Then vae."), ("tool_call", "toolu_2")]
    out = await ask(ws, sid, "what are ksampler and vae?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    assert _said(out["message"]["parts"]) == turn + [
        ("tool_result", "toolu_1"), ("tool_result", "toolu_2"), ("text", "Both found.")]
    # Each call is announced where it streamed, so the panel starts the words after it anew.
    assert _live(ws, out["run"]["id"]) == [
        ("text", "First ksampler."), ("call", "toolu_1 pending"), ("text", "Then vae."), ("call", "toolu_2 pending"),
        ("call", "toolu_1 running"), ("call", "toolu_2 running"), ("text", "Both found.")]
    uses = [("tool_use" if kind == "tool_call" else kind, said) for kind, said in turn]
    asked = [r for r in fake_llm.requests if r.method == "POST"]
    assert _said(asked[1].body["messages"][1]["content"]) == uses
    ws = await rejoin_from_the_store(ws, client, service, sid)
    out = await ask(ws, sid, "sure?")
    assert out["run"]["status"] == "completed", out["run"]["error"]
    later = [r for r in fake_llm.requests if r.method == "POST"][-1].body["messages"]
    assert [m["role"] for m in later] == ["user", "assistant", "user", "assistant", "user"]
    assert _said(later[1]["content"]) == uses
