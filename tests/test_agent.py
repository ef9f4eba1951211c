"""The agent loop through the whole service: streaming, tools, permissions, several roles, abort,
budgets and errors, with a scripted model. Concurrency is proven with barriers, never with time."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any, AsyncIterator

import pytest

from fakes.scripted_provider import Barrier, ScriptedProvider, ScriptedResolver, text_turn, tool_turn
from opencode_agent.core.agent import (
    REPLY_RESERVE_TOKENS, arguments_problem, build_history, checked_call, estimate_tokens, fit_to_context,
    message_turns,
)
from opencode_agent.core.providers.base import ChatMessage
from opencode_agent.core.errors import ProviderError
from opencode_agent.core.protocol import (
    ImagePart, Message, ModelCaps, SendBody, TextPart, ToolCallPart, ToolResultPart, now,
)
from opencode_agent.core.providers.base import ChatRequest, Finish, TextDelta, ToolCallReady, UsageReport
from opencode_agent.core.skills import Skill
from opencode_agent.core.tools import ToolContext, ToolOutput, tool
from wsclient import WsClient, run_final


def role(skill_id: str) -> Skill:
    return Skill(id=skill_id, name=skill_id.title(), description="test role", kind="role",
                 instructions=f"ROLE:{skill_id}")


def role_of(request: ChatRequest) -> str:
    return request.system.split("\n")[0].removeprefix("ROLE:")


pair_barrier: Any = None


@tool(permission="read")
async def lookup(ctx: ToolContext, query: str) -> str:
    """Look something up."""
    return f"found {query}"


@tool(permission="read")
async def meet(ctx: ToolContext, who: str) -> str:
    """Wait until both parallel calls are running (proves they run at once)."""
    assert pair_barrier is not None
    await asyncio.wait_for(pair_barrier.wait(), 5)
    return f"met {who}"


@tool(permission="edit")
async def paint(ctx: ToolContext, color: str) -> dict[str, Any]:
    """Change the canvas colour."""
    return {"painted": color}


@tool(permission="read")
async def render(ctx: ToolContext, what: str) -> ToolOutput:
    """Render something as an image."""
    return ToolOutput(f"rendered {what}", images=[ImagePart(filename=f"{what}.png")])


tool_running: asyncio.Event | None = None
tool_cancelled: asyncio.Event | None = None


@tool(permission="read")
async def wait_forever(ctx: ToolContext, reason: str) -> str:
    """Run until cancelled (an abort must cancel a running tool)."""
    assert tool_running is not None and tool_cancelled is not None
    tool_running.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        tool_cancelled.set()
        raise
    return "never"


@tool(permission="read")
async def blob(ctx: ToolContext, n: int) -> str:
    """Return a large result (40,000 characters)."""
    return f"blob {n} " + "x" * 40_000


SECRET = "sk-tool-secret-0123456789"
sibling_started: asyncio.Event | None = None
release_sibling: asyncio.Event | None = None


@tool(permission="read")
async def crash(ctx: ToolContext, x: str) -> str:
    """Fail with an unexpected exception (not a ToolError) whose text holds a secret."""
    assert sibling_started is not None
    await asyncio.wait_for(sibling_started.wait(), 5)  # the other call is running
    raise RuntimeError(f"could not reach http://user:{SECRET}@example.invalid/")


@tool(permission="read")
async def sibling(ctx: ToolContext, x: str) -> str:
    """Run until the test releases it."""
    assert sibling_started is not None and release_sibling is not None
    sibling_started.set()
    await asyncio.wait_for(release_sibling.wait(), 5)
    return f"sibling {x} done"


SLOW_TOOLS = Skill(id="slowtools", name="Slow tools", description="tools for tests", kind="tools",
                   instructions="", tools=[render, wait_forever, blob, crash, sibling])
TOOLS = Skill(id="testtools", name="Test tools", description="tools for tests", kind="tools",
              instructions="Use the tools.", tools=[lookup, meet, paint])


@pytest.fixture
async def env(client, service):
    provider = ScriptedProvider()
    service.sessions.deps.models = ScriptedResolver(provider)
    for s in (role("alpha"), role("beta"), role("gamma"), TOOLS, SLOW_TOOLS):
        service.skills.register(s, replace=True)

    async def session(*skills: str, **extra: Any) -> str:
        r = await client.post("/opencode/sessions", json={"skills": list(skills), **extra})
        assert r.status == 201, await r.text()
        return (await r.json())["id"]

    async def ws(sid: str) -> WsClient:
        w = WsClient(await client.ws_connect("/opencode/ws"))
        await w.command("join", session_id=sid, panel=True)
        return w

    return provider, session, ws


def hold_user_commits(service: Any, monkeypatch: Any) -> asyncio.Event:
    """Make every user message's save wait for the returned event (a slow disk under load)."""
    commit = asyncio.Event()
    save = service.store.save_message

    async def slow_save(message: Message) -> None:
        if message.role == "user":
            await commit.wait()
        await save(message)

    monkeypatch.setattr(service.store, "save_message", slow_save)
    return commit


def final_message(ws: WsClient, run_id: str) -> dict[str, Any]:
    for ev in reversed(ws.of_type("message.completed")):
        if ev["data"]["message"]["run_id"] == run_id:
            return ev["data"]["message"]
    raise AssertionError("no completed message")


async def test_text_reply_with_usage_and_cost(env, service):
    provider, session, ws_for = env
    provider.turns.append(text_turn("Hello", " world", input_tokens=1000, output_tokens=500))
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="hi")
    await ws.until(run_final(sent["data"]["run_id"]))
    msg = final_message(ws, sent["data"]["run_id"])
    assert msg["status"] == "completed" and msg["parts"] == [{"type": "text", "text": "Hello world"}]
    assert msg["usage"]["input_tokens"] == 1000 and msg["usage"]["output_tokens"] == 500
    assert msg["usage"]["cost"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    usage = (await ws.until(lambda e: e["type"] == "usage.updated"))["data"]["usage"]
    assert usage["input_tokens"] == 1000
    assert (await service.sessions.get(sid)).usage.output_tokens == 500
    req = provider.requests[0]
    assert req.system.startswith("ROLE:alpha") and req.messages[-1].parts[0].text == "hi"
    assert req.max_tokens is None  # no budget: the model's own limit
    logs = [e["data"]["message"] for e in ws.of_type("log")]
    assert any("tokens: 1000 in, 500 out" in line for line in logs)
    # The turn's two drawer lines, as a `logging` record through `BusLogHandler` would make them.
    turn_lines = [e["data"] for e in ws.of_type("log") if e["data"]["message"].startswith("turn 1: ")]
    assert [line["message"].split(" ")[2] for line in turn_lines] == ["request", "stop"]
    for line in turn_lines:
        assert line["level"] == "debug" and line["module"] == "opencode.agent"
        assert line["run_id"] == sent["data"]["run_id"] and abs(line["time"] - time.time()) < 60


async def test_the_turn_lines_follow_the_loggers_level(env):
    import logging

    provider, session, ws_for = env
    provider.turns.append(text_turn("quiet"))
    sid = await session("alpha")
    ws = await ws_for(sid)
    logger = logging.getLogger("opencode.agent")
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        sent = await ws.command("send", session_id=sid, text="hi")
        await ws.until(run_final(sent["data"]["run_id"]))
    finally:
        logger.setLevel(old)
    assert final_message(ws, sent["data"]["run_id"])["status"] == "completed"
    assert not [e for e in ws.of_type("log") if e["data"]["message"].startswith("turn ")]


async def test_tool_call_result_is_fed_back(env):
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("c1", "lookup", {"query": "ksampler"})), text_turn("It is a sampler.")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="what is ksampler")
    await ws.until(run_final(sent["data"]["run_id"]))
    started = ws.of_type("tool.started")[0]["data"]["call"]
    finished = ws.of_type("tool.finished")[0]["data"]
    assert started["name"] == "lookup" and finished["result"]["content"] == "found ksampler"
    # The debug drawer gets the call with its arguments, then how it ended and how long it took.
    lines = [e["data"] for e in ws.of_type("log") if e["data"]["message"].startswith("tool lookup")]
    assert lines[0]["message"] == "tool lookup(query='ksampler')"
    assert re.fullmatch(r"tool lookup completed in \d+ ms", lines[1]["message"])
    assert all(line["run_id"] == sent["data"]["run_id"] and line["level"] == "info" for line in lines)
    assert finished["call"]["status"] == "completed" and finished["call"]["duration_ms"] is not None
    second = provider.requests[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert isinstance(second.messages[2].parts[0], ToolResultPart)
    assert {t.name for t in provider.requests[0].tools} == {"lookup", "meet", "paint"}
    msg = final_message(ws, sent["data"]["run_id"])
    assert [p["type"] for p in msg["parts"]] == ["tool_call", "tool_result", "text"]


async def test_parallel_tool_calls_run_at_once(env):
    global pair_barrier
    pair_barrier = Barrier(2)
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("a", "meet", {"who": "x"}), ("b", "meet", {"who": "y"})), text_turn("done")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed"
    results = sorted(e["data"]["result"]["content"] for e in ws.of_type("tool.finished"))
    assert results == ["met x", "met y"]


async def test_a_tool_that_raises_is_an_error_the_model_reads_and_its_sibling_finishes(env, caplog):
    """An unexpected exception in one of two parallel calls is that call's error result (its type
    only: its text may hold a secret; the traceback goes to the server log); the run goes on, and
    the other call finishes before the run does."""
    global sibling_started, release_sibling
    sibling_started, release_sibling = asyncio.Event(), asyncio.Event()
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("a", "crash", {"x": "1"}), ("b", "sibling", {"x": "2"})), text_turn("ok")])
    sid = await session("alpha", "slowtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    run_id = sent["data"]["run_id"]
    first = await ws.until(lambda e: e["type"] == "tool.finished" or run_final(run_id)(e))
    assert first["type"] == "tool.finished", first["data"]  # not the run's end
    crashed = first["data"]
    assert crashed["call"]["name"] == "crash" and crashed["call"]["status"] == "error"
    assert crashed["result"]["is_error"] and "unexpected RuntimeError" in crashed["result"]["content"]
    assert SECRET not in crashed["result"]["content"]
    release_sibling.set()
    final = await ws.until(run_final(run_id))
    assert final["data"]["run"]["status"] == "completed"
    order = [(e["type"], e["data"].get("call", {}).get("name")) for e in ws.events
             if e["type"] in ("tool.finished", "message.completed")]
    assert order == [("tool.finished", "crash"), ("tool.finished", "sibling"), ("message.completed", None)]
    results = provider.requests[1].messages[-1].parts
    assert [(r.name, r.is_error) for r in results] == [("crash", True), ("sibling", False)]
    logged = [r for r in caplog.records if r.getMessage() == "tool crash raised RuntimeError"]
    assert logged and "Traceback" in (logged[0].exc_text or "")


async def test_a_failing_permission_check_is_an_error_result_not_the_runs_end(env, service, monkeypatch):
    """The gate's audit write fails (a full disk): the call is not run and the model is told."""
    from opencode_agent.core.errors import StoreUnavailable

    async def refuse(entry: Any) -> None:
        raise StoreUnavailable("disk full")

    monkeypatch.setattr(service.store, "add_audit", refuse)
    service.gate.global_rules["paint"] = "deny"  # a denial is audited
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "red"})), text_turn("could not paint")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint it red")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed", final["data"]["run"]["error"]
    finished = ws.of_type("tool.finished")[0]["data"]
    assert finished["call"]["status"] == "error" and finished["result"]["is_error"]
    assert finished["result"]["content"].startswith("paint could not be run: an internal error (StoreUnavailable")
    assert provider.requests[1].messages[-1].parts[0].is_error


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep, as a provider's `json.loads` gives it."""
    return json.loads('{"a":' * depth + "1" + "}" * depth)


@pytest.mark.parametrize("past, why", [
    ("depth", "arguments nested deeper than 64 levels"),
    ("size", "arguments of 100,014 characters as JSON, more than the 100,000 allowed"),
])
async def test_arguments_too_deep_or_too_big_are_an_error_the_model_reads(env, service, past, why):
    """Valid JSON 300 levels deep: pydantic will not serialize it, so the call's event and the
    reply's save failed and the run ended in an internal error. The call is refused like one
    whose arguments are not JSON, and nothing after it (events, store, the next request) holds them."""
    provider, session, ws_for = env
    query = nested(300) if past == "depth" else "x" * 100_001
    provider.turns.extend([tool_turn(("c1", "lookup", {"query": query})), text_turn("sorry")])
    del query  # the test's own frame holds no deep value for pytest to show
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed", final["data"]["run"]["error"]
    assert ws.of_type("tool.started")[0]["data"]["call"]["arguments"] == {}
    finished = ws.of_type("tool.finished")[0]["data"]
    assert finished["call"]["status"] == "error" and finished["call"]["provider_data"] == {"refused_arguments": why}
    assert finished["result"]["is_error"]
    assert finished["result"]["content"].startswith(f"your arguments for lookup were not taken: {why}; ")
    call = provider.requests[1].messages[1].parts[0]
    assert isinstance(call, ToolCallPart) and call.arguments == {}
    await service.store.flush()
    stored = await service.store.get_message(final_message(ws, sent["data"]["run_id"])["id"])
    assert stored is not None and stored.status == "completed" and stored.text() == "sorry"


def test_arguments_may_nest_64_levels_and_no_deeper() -> None:
    assert arguments_problem(nested(64)) is None  # the arguments object itself is the first level
    assert arguments_problem(nested(65)) == "arguments nested deeper than 64 levels"
    assert arguments_problem({"list": [[]] * 3}) is None


def test_a_call_whose_provider_data_is_too_big_keeps_none_of_it() -> None:
    """The raw text of invalid arguments lives in the provider's data: past the limit it is dropped too."""
    call = ToolCallReady("c1", "f", {}, {"invalid_arguments": "{" * 100_001})
    assert checked_call(call) == ({}, {"refused_arguments": "arguments of 100,026 characters as JSON, "
                                                           "more than the 100,000 allowed"})
    kept = ToolCallReady("c1", "f", {"x": 1}, {"extra_content": {"google": {"thought_signature": "s"}}})
    assert checked_call(kept) == (kept.arguments, kept.provider_data)


def test_a_calls_reasoning_is_kept_whatever_its_size_and_counted() -> None:
    """A thinking model's server refuses a tool-call turn sent back without its reasoning: the
    limit on provider data (meant for the raw text of invalid arguments) does not drop it, and the
    history's estimate counts it, as it is sent with the call."""
    reasoning = {"profile": "p", "reasoning_content": "x" * 200_000}
    call = ToolCallReady("c1", "f", {"x": 1}, {"reasoning": reasoning})
    assert checked_call(call) == ({"x": 1}, {"reasoning": reasoning})
    invalid = ToolCallReady("c1", "f", {}, {"invalid_arguments": "{" * 100_001, "reasoning": reasoning})
    assert checked_call(invalid) == ({}, {"reasoning": reasoning, "refused_arguments": (
        "arguments of 100,026 characters as JSON, more than the 100,000 allowed")})
    part = ToolCallPart(id="c1", name="f", arguments={"x": 1}, provider_data={"reasoning": reasoning})
    assert estimate_tokens([part]) > 50_000


def test_a_call_left_out_for_want_of_a_result_hands_its_reasoning_on() -> None:
    """A run aborted while its tools ran leaves some calls answered, some not; the turn's reasoning
    (on its first call) goes back with the turn whichever of them is kept."""
    t = now()
    reasoning = {"profile": "p", "reasoning_content": "think"}
    reply = Message(id="m2", session_id="s", role="assistant", skill="alpha", created_at=t, updated_at=t, parts=[
        ToolCallPart(id="c1", name="lookup", arguments={"query": "a"}, provider_data={"reasoning": reasoning}),
        ToolCallPart(id="c2", name="lookup", arguments={"query": "b"}),
        ToolResultPart(tool_call_id="c2", name="lookup", content="r"),  # c1 never answered: dropped
        ToolCallPart(id="c3", name="lookup", arguments={}),  # the next turn's: none of that reasoning
        ToolResultPart(tool_call_id="c3", name="lookup", content="r"),
    ])
    calls = [p for turn in message_turns(reply, vision=False) for p in turn.parts if isinstance(p, ToolCallPart)]
    assert [(c.id, c.provider_data) for c in calls] == [("c2", {"reasoning": reasoning}), ("c3", None)]
    assert reply.parts[1].provider_data is None  # the stored call is left as it was


async def test_a_run_reads_the_references_of_its_own_skills_only(env):
    """`read_skill_reference` is offered for the run's skills' files; another skill's are refused."""
    provider, session, ws_for = env
    provider.turns.extend([
        tool_turn(("r1", "read_skill_reference", {"skill": "workflow-doctor", "path": "references/common-errors.md"}),
                  ("r2", "read_skill_reference", {"skill": "prompt-engineer", "path": "references/model-families.md"})),
        text_turn("read"),
    ])
    sid = await session("prompt-engineer")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    await ws.until(run_final(sent["data"]["run_id"]))
    results = {e["data"]["call"]["id"]: e["data"]["result"] for e in ws.of_type("tool.finished")}
    assert results["r1"]["is_error"] and results["r1"]["content"].startswith(
        "no skill 'workflow-doctor' among this reply's skills; skills with references: prompt-engineer")
    assert not results["r2"]["is_error"] and results["r2"]["content"].startswith("# Prompt conventions by model family")


async def test_gather_all_cancels_and_awaits_the_other_calls_when_one_fails() -> None:
    """Whatever still escapes a call ends its siblings before the run ends (TaskGroup-like)."""
    from opencode_agent.core.agent import gather_all

    started, log_ = asyncio.Event(), []

    async def fails() -> None:
        await started.wait()
        raise ValueError("bug")

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup that takes a loop turn
            log_.append("cancelled and cleaned up")
            raise

    with pytest.raises(ValueError):
        await asyncio.wait_for(gather_all([fails(), slow()]), 5)
    assert log_ == ["cancelled and cleaned up"]
    assert await gather_all(asyncio.sleep(0, n) for n in (1, 2)) == [1, 2]


@pytest.mark.parametrize("decision,remember", [("allow", False), ("deny", False), ("allow", True)])
async def test_edit_tool_asks_permission(env, service, decision, remember):
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "red"})), text_turn("ok")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint it red")
    req = (await ws.until(lambda e: e["type"] == "permission.requested"))["data"]
    assert req["tool"] == "paint" and req["permission_class"] == "edit" and "red" in req["summary"]
    await ws.command("permission.reply", session_id=sid, request_id=req["request_id"], decision=decision,
                     remember=remember)
    await ws.until(run_final(sent["data"]["run_id"]))
    result = ws.of_type("tool.finished")[0]["data"]
    if decision == "allow":
        assert result["call"]["status"] == "completed" and "red" in result["result"]["content"]
    else:
        assert result["call"]["status"] == "denied" and result["result"]["is_error"]
    audit = await service.store.list_audit(sid)
    assert audit[-1]["tool"] == "paint" and audit[-1]["decision"] == decision
    session_now = await service.sessions.get(sid)
    assert session_now.permissions == ({"paint": "allow"} if remember else {})


async def test_permission_times_out_as_deny(env, service):
    provider, session, ws_for = env
    service.gate.timeout = 0.2
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "blue"})), text_turn("ok")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint")
    await ws.until(run_final(sent["data"]["run_id"]))
    resolved = ws.of_type("permission.resolved")[0]["data"]
    assert resolved["decision"] == "deny" and "timeout" in resolved["reason"]


async def test_permission_reply_over_rest(env, client):
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "green"})), text_turn("ok")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint")
    req = (await ws.until(lambda e: e["type"] == "permission.requested"))["data"]
    r = await client.post(f"/opencode/sessions/{sid}/permissions",
                          json={"request_id": req["request_id"], "decision": "allow"})
    assert r.status == 200
    await ws.until(run_final(sent["data"]["run_id"]))
    assert ws.of_type("tool.finished")[0]["data"]["call"]["status"] == "completed"
    again = await client.post(f"/opencode/sessions/{sid}/permissions",
                              json={"request_id": req["request_id"], "decision": "allow"})
    assert again.status == 404


def interleaving_roles(barrier: Any):
    def by_role(request: ChatRequest):
        name = role_of(request)

        async def turn(_: ChatRequest) -> AsyncIterator[Any]:
            for i in range(3):
                yield TextDelta(f"{name}{i} ")
                await asyncio.wait_for(barrier.wait(), 5)
            yield UsageReport(1, 1)
            yield Finish("stop")

        return turn
    return by_role


async def test_three_roles_stream_interleaved_and_complete(env):
    provider, session, ws_for = env
    provider.by_role = interleaving_roles(Barrier(3))
    sid = await session("alpha", "beta", "gamma")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="hello all")
    for run_id in sent["data"]["run_ids"]:
        await ws.until(run_final(run_id))
    order = [e["data"]["skill"] for e in ws.of_type("message.delta")]
    assert sorted(set(order)) == ["alpha", "beta", "gamma"]
    assert order[:3] != [order[0]] * 3  # interleaved, not one role after another
    for run_id in sent["data"]["run_ids"]:
        msg = final_message(ws, run_id)
        assert msg["status"] == "completed" and msg["parts"][0]["text"] == f"{msg['skill']}0 {msg['skill']}1 {msg['skill']}2 "


async def test_each_role_asks_its_model_in_the_loop_turn_of_the_send(env, service):
    """On Python 3.12+ a run starts eagerly: under load a loop turn lasts milliseconds, and the
    model should not wait one (or, with aiohttp's own body-writing task, two) before it is asked."""
    provider, session, _ = env
    sid = await session("alpha", "beta")
    await service.sessions.get(sid)  # loaded, so the send itself does not wait on the store
    asked_in_the_send_turn: dict[str, bool] = {}
    next_turn = asyncio.Event()

    def by_role(request: ChatRequest) -> list[Any]:
        asked_in_the_send_turn[role_of(request)] = not next_turn.is_set()
        return text_turn("ok")

    provider.by_role = by_role
    asyncio.get_running_loop().call_soon(next_turn.set)  # runs in the loop's next turn
    sent = await service.sessions.send(sid, SendBody(text="hi"))
    await service.sessions.wait_runs(sid, sent.run_ids)
    eager = sys.version_info >= (3, 12)
    assert asked_in_the_send_turn == {"alpha": eager, "beta": eager}


async def test_at_role_addresses_one_role(env):
    provider, session, ws_for = env
    provider.by_role = lambda req: text_turn(f"I am {role_of(req)}")
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="@beta who are you")
    assert len(sent["data"]["run_ids"]) == 1
    await ws.until(run_final(sent["data"]["run_id"]))
    assert final_message(ws, sent["data"]["run_id"])["skill"] == "beta"
    assert provider.requests[-1].messages[-1].parts[0].text == "@beta who are you"  # as typed


async def test_several_at_roles_address_each_of_them(env):
    provider, session, ws_for = env
    provider.by_role = lambda req: text_turn(f"I am {role_of(req)}")
    sid = await session("alpha", "beta", "gamma")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text=" @gamma @beta  both of you, @alpha is not asked")
    assert len(sent["data"]["run_ids"]) == 2
    for run_id in sent["data"]["run_ids"]:
        await ws.until(run_final(run_id))
    assert sorted(final_message(ws, r)["skill"] for r in sent["data"]["run_ids"]) == ["beta", "gamma"]
    assert {r.messages[-1].parts[0].text for r in provider.requests} == {" @gamma @beta  both of you, @alpha is not asked"}


def stalling_role(stall: str, gate: asyncio.Event):
    def by_role(request: ChatRequest):
        name = role_of(request)

        async def turn(_: ChatRequest) -> AsyncIterator[Any]:
            yield TextDelta(f"{name} starts")
            if name == stall:
                await asyncio.Event().wait()  # never finishes on its own
            await gate.wait()
            yield TextDelta(" and ends")
            yield Finish("stop")

        return turn
    return by_role


async def stalled_reply(env, text: str) -> tuple[ScriptedProvider, str, WsClient, dict[str, Any]]:
    """An `alpha` session whose reply to `text` has begun streaming and never ends on its own:
    the provider, the session id, its socket and the send's ack."""
    provider, session, ws_for = env
    provider.by_role = stalling_role("alpha", asyncio.Event())
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text=text)
    await ws.until(lambda e: e["type"] == "message.delta")
    return provider, sid, ws, sent


async def test_abort_one_role_the_others_finish(env):
    provider, session, ws_for = env
    gate = asyncio.Event()
    provider.by_role = stalling_role("beta", gate)
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    await ws.until(lambda e: e["type"] == "message.delta" and e["data"]["skill"] == "beta")
    ack = await ws.command("abort", session_id=sid, skill="beta")
    assert len(ack["data"]["aborted"]) == 1
    gate.set()
    statuses = {}
    for run_id in sent["data"]["run_ids"]:
        ev = await ws.until(run_final(run_id))
        statuses[ev["data"]["run"]["skill"]] = ev["data"]["run"]["status"]
    assert statuses == {"alpha": "completed", "beta": "aborted"}
    beta_msg = [final_message(ws, r) for r in sent["data"]["run_ids"] if final_message(ws, r)["skill"] == "beta"][0]
    assert beta_msg["parts"][0]["text"] == "beta starts"  # keeps the text it had
    assert provider.closed_streams == 2  # the upstream stream of the aborted run was closed


async def test_a_send_waiting_on_the_disk_holds_up_no_other_command_on_its_socket(env, service, monkeypatch):
    """A send is answered once its message is committed, slow under load. The ping and the abort
    sent behind it on the same socket are answered meanwhile, and the abort finds its run."""
    provider, session, ws_for = env
    provider.by_role = stalling_role("alpha", asyncio.Event())
    sid = await session("alpha")
    ws = await ws_for(sid)
    disk = hold_user_commits(service, monkeypatch)
    send = await ws.post("send", session_id=sid, text="go")
    try:
        assert (await ws.command("ping"))["data"] == {"pong": True}
        aborted = await ws.command("abort", session_id=sid)
    finally:
        disk.set()
    sent = await ws.reply(send)
    assert aborted["data"]["aborted"] == [sent["data"]["run_id"]]
    assert (await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"]["status"] == "aborted"


async def test_an_interruption_sees_the_reply_it_cut_off(env):
    """`mode: interrupt` aborts the running reply and sends: the new request's history has the
    cut-off reply, with the text it had, between the two prompts."""
    provider, sid, ws, first = await stalled_reply(env, "first question")
    provider.by_role = None
    provider.turns.append(text_turn("second answer"))
    second = await ws.command("send", session_id=sid, text="second", mode="interrupt")
    assert second["data"]["queued"] is False
    assert (await ws.until(run_final(first["data"]["run_id"])))["data"]["run"]["status"] == "aborted"
    assert (await ws.until(run_final(second["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    history = [(m.role, "".join(getattr(p, "text", "") for p in m.parts)) for m in provider.requests[-1].messages]
    assert history == [("user", "first question"), ("assistant", "alpha starts"), ("user", "second")]


def slow_to_stop(name: str):
    """A turn that streams, then waits; told to stop, it takes 50 ms (an upstream slow to close)."""
    async def turn(_: ChatRequest) -> AsyncIterator[Any]:
        yield TextDelta(f"{name} starts")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            raise
    return turn


async def test_a_message_sent_while_an_interrupt_waits_comes_after_it(env, service):
    provider, session, ws_for = env
    sid = await session("alpha")
    ws = await ws_for(sid)
    provider.turns.extend([slow_to_stop("first"), text_turn("interrupting answer"), text_turn("later answer")])
    first = await ws.command("send", session_id=sid, text="first")
    await ws.until(lambda e: e["type"] == "message.delta")
    interrupting, later = await asyncio.gather(
        service.sessions.send(sid, SendBody(text="interrupting", mode="interrupt")),
        service.sessions.send(sid, SendBody(text="later")))
    assert (interrupting.queued, later.queued) == (False, True)
    await service.sessions.wait_runs(sid, [later.run_id])
    prompts = [r.messages[-1].parts[0].text for r in provider.requests]
    assert prompts == ["first", "interrupting", "later"]
    assert (await ws.until(run_final(first["data"]["run_id"])))["data"]["run"]["status"] == "aborted"


async def test_of_two_interrupts_at_once_the_newer_one_answers(env, service):
    provider, session, ws_for = env
    sid = await session("alpha")
    ws = await ws_for(sid)
    # Whatever starts, only the newest prompt gets an answer that ends on its own.
    provider.by_role = lambda request: (text_turn("newer answer") if request.messages[-1].parts[0].text == "newer"
                                        else slow_to_stop(request.messages[-1].parts[0].text))
    first = await ws.command("send", session_id=sid, text="first")
    await ws.until(lambda e: e["type"] == "message.delta")
    older, newer = await asyncio.gather(
        service.sessions.send(sid, SendBody(text="older", mode="interrupt")),
        service.sessions.send(sid, SendBody(text="newer", mode="interrupt")))
    assert not older.queued and not newer.queued
    await service.sessions.wait_runs(sid, [older.run_id, newer.run_id])
    statuses = {r: (await ws.until(run_final(r)))["data"]["run"]["status"]
                for r in (first["data"]["run_id"], older.run_id, newer.run_id)}
    assert list(statuses.values()) == ["aborted", "aborted", "completed"]


async def test_abort_all_closes_upstream_and_nothing_streams_after(env):
    provider, sid, ws, sent = await stalled_reply(env, "go")
    await ws.command("abort", session_id=sid)
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "aborted"
    assert provider.closed_streams == 1
    assert not [e for e in ws.events if e["type"] == "message.delta" and e["seq"] > final["seq"]]


async def test_budget_stops_the_run(env):
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("c1", "lookup", {"query": "a"})), text_turn("never")])
    sid = await session("alpha", "testtools", title="b")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_tokens": 5}})
    sent = await ws.command("send", session_id=sid, text="go")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "error"
    assert "budget of 5 tokens" in final["data"]["run"]["error"]
    assert len(provider.requests) == 1


async def test_a_tools_spec_is_made_once_and_sent_as_is(env):
    provider, session, ws_for = env
    provider.turns.extend([text_turn("one"), text_turn("two")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    for text in ("first", "second"):
        sent = await ws.command("send", session_id=sid, text=text)
        await ws.until(run_final(sent["data"]["run_id"]))
    sent_specs = [{t.name: t for t in r.tools}["lookup"] for r in provider.requests]
    assert sent_specs[0] is sent_specs[1] is lookup.spec()  # its schema is generated once
    assert lookup.spec().parameters["properties"]["query"]["type"] == "string"
    assert lookup.spec().size == len("lookup") + len(lookup.description) + len(json.dumps(lookup.spec().parameters))


@pytest.mark.parametrize("vision", [False, True])
async def test_tool_images_reach_only_a_model_with_vision(env, service, vision):
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=True, vision=vision))
    provider.turns.extend([tool_turn(("r1", "render", {"what": "cat"})), text_turn("a cat")])
    sid = await session("alpha", "slowtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="draw")
    await ws.until(run_final(sent["data"]["run_id"]))
    sent_result = provider.requests[1].messages[-1].parts[0]
    assert isinstance(sent_result, ToolResultPart)
    if vision:
        assert [i.filename for i in sent_result.images] == ["cat.png"] and sent_result.content == "rendered cat"
    else:
        assert sent_result.images == [] and "1 image(s) not shown" in sent_result.content
    # The stored reply keeps the image for the panel either way.
    stored = final_message(ws, sent["data"]["run_id"])
    assert [p["images"][0]["filename"] for p in stored["parts"] if p["type"] == "tool_result"] == ["cat.png"]


@pytest.mark.parametrize("vision", [False, True])
async def test_a_users_images_reach_only_a_model_with_vision(env, service, vision):
    """A model without vision is told the message had images (and the session's log says so),
    rather than answering as if there were none."""
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(vision=vision))
    provider.turns.append(text_turn("seen"))
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="what is this?", images=[{"filename": "cat.png"}])
    await ws.until(run_final(sent["data"]["run_id"]))
    (prompt,) = provider.requests[0].messages
    warned = [e for e in ws.of_type("log") if "does not take images" in e["data"]["message"]]
    if vision:
        assert [type(p).__name__ for p in prompt.parts] == ["TextPart", "ImagePart"] and not warned
    else:
        assert [p.text for p in prompt.parts] == ["what is this?", "[1 image(s) not shown: this model does not take images]"]
        assert len(warned) == 1 and warned[0]["data"]["level"] == "warning"


async def test_abort_cancels_a_running_tool_within_200_ms(env):
    global tool_running, tool_cancelled
    tool_running, tool_cancelled = asyncio.Event(), asyncio.Event()
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("w1", "wait_forever", {"reason": "test"})), text_turn("never")])
    sid = await session("alpha", "slowtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    await asyncio.wait_for(tool_running.wait(), 5)
    asked = time.monotonic()
    await ws.command("abort", session_id=sid)
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert time.monotonic() - asked < 0.2  # the issue's bound; it takes a few ms
    assert tool_cancelled.is_set() and final["data"]["run"]["status"] == "aborted"
    call = final_message(ws, sent["data"]["run_id"])["parts"][0]
    assert call["type"] == "tool_call" and call["status"] == "aborted"
    assert len(provider.requests) == 1


async def test_history_reaches_past_the_in_memory_window_while_the_context_has_room(env, service):
    provider, session, ws_for = env
    service.sessions.recent_limit = 4  # the session keeps its last 4 messages in memory
    sid = await session("alpha")
    ws = await ws_for(sid)
    for i in range(5):
        provider.turns.append(text_turn(f"answer {i}"))
        sent = await ws.command("send", session_id=sid, text=f"question {i}")
        await ws.until(run_final(sent["data"]["run_id"]))
    texts = [p.text for m in provider.requests[-1].messages for p in m.parts]
    assert texts == [x for i in range(4) for x in (f"question {i}", f"answer {i}")] + ["question 4"]
    # Older messages are read from the store once per loaded session, not once per run.
    reads = []
    real_read = service.store.get_messages
    service.store.get_messages = lambda *a, **k: reads.append(k) or real_read(*a, **k)
    provider.turns.append(text_turn("answer 5"))
    sent = await ws.command("send", session_id=sid, text="question 5")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert len(provider.requests[-1].messages) == 11 and reads == []


async def test_roles_reaching_past_the_window_at_once_read_it_once(env, service):
    provider, session, ws_for = env
    service.sessions.recent_limit = 4
    provider.by_role = lambda request: text_turn(f"{role_of(request)} says {len(provider.requests)}")
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    for i in range(3):
        sent = await ws.command("send", session_id=sid, text=f"question {i}")
        for run_id in sent["data"]["run_ids"]:
            await ws.until(run_final(run_id))
    for request in provider.requests[-2:]:
        texts = [p.text for m in request.messages for p in m.parts]
        # 3 questions, this role's 2 earlier answers and the other role's 2, labelled.
        assert len(texts) == len(set(texts)) == 7, texts
        assert [t for t in texts if t.startswith("question")] == ["question 0", "question 1", "question 2"]
        assert len([t for t in texts if t.startswith("[@")]) == 2


async def test_the_instructions_and_tool_schemas_take_their_share_of_the_context(env, service):
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=True, context_tokens=4096 + 3000))
    service.skills.register(Skill(id="verbose", name="Verbose", description="test role", kind="role",
                                  instructions="ROLE:verbose\n" + "x" * 4000), replace=True)  # ~1,000 tokens
    sid = await session("verbose")
    ws = await ws_for(sid)
    for i in range(3):
        provider.turns.append(text_turn("y" * 4800))  # ~1,200 tokens a reply
        sent = await ws.command("send", session_id=sid, text=f"question {i}")
        await ws.until(run_final(sent["data"]["run_id"]))
    # 3,000 tokens of room less ~1,000 for the instructions: two replies (~2,400) no longer fit.
    sent = provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "user"] and sent[0].parts[0].text == "question 1"


async def test_a_reply_the_dialect_reserves_takes_its_share_of_the_context(env, service, monkeypatch):
    """Anthropic asks for max_tokens of reply room (32,000 for a current Claude), and a server that
    counts prompt plus reply against the context refuses a history that leaves less."""
    provider, session, ws_for = env
    monkeypatch.setattr(provider, "reply_tokens", lambda model: 4096 + 2500, raising=False)
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=True, context_tokens=4096 + 5000))
    sid = await session("alpha")
    ws = await ws_for(sid)
    for i in range(3):
        provider.turns.append(text_turn("y" * 8000))  # ~2,000 tokens a reply
        sent = await ws.command("send", session_id=sid, text=f"question {i}")
        await ws.until(run_final(sent["data"]["run_id"]))
    # 5,000 tokens of room, 2,500 of them kept for the reply: one earlier exchange fits, two do not.
    sent = provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "user"] and sent[0].parts[0].text == "question 1"


async def test_the_budget_counts_every_role_running_at_once(env):
    global pair_barrier
    pair_barrier = Barrier(2)  # both first turns are in before either role asks again
    provider, session, ws_for = env
    turns = {name: [tool_turn((f"{name}-1", "meet", {"who": name})), text_turn("never")] for name in ("alpha", "beta")}
    provider.by_role = lambda request: turns[role_of(request)].pop(0)
    sid = await session("alpha", "beta", "testtools")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_tokens": 15}})
    sent = await ws.command("send", session_id=sid, text="go")
    finals = [await ws.until(run_final(run_id)) for run_id in sent["data"]["run_ids"]]
    # 10 tokens a role: either alone is under 15, together they are over it.
    assert [f["data"]["run"]["status"] for f in finals] == ["error", "error"]
    assert all("budget of 15 tokens" in f["data"]["run"]["error"] for f in finals)
    assert len(provider.requests) == 2


async def test_a_reply_is_capped_where_the_budget_runs_out(env):
    provider, session, ws_for = env
    provider.turns.extend([text_turn("first", input_tokens=100, output_tokens=50),
                           [TextDelta("cut sh"), UsageReport(100, 150), Finish("length")]])
    sid = await session("alpha")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_tokens": 300}})
    first = await ws.command("send", session_id=sid, text="one")
    assert (await ws.until(run_final(first["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    second = await ws.command("send", session_id=sid, text="two")
    final = await ws.until(run_final(second["data"]["run_id"]))
    assert [r.max_tokens for r in provider.requests] == [300, 150]  # what was left of the budget
    assert final["data"]["run"]["status"] == "error"
    assert "cut where this session's budget ran out (300 tokens)" in final["data"]["run"]["error"]
    assert final_message(ws, second["data"]["run_id"])["parts"] == [{"type": "text", "text": "cut sh"}]


async def test_a_money_budget_stops_the_next_run(env, service):
    provider, session, ws_for = env
    provider.turns.extend([text_turn("first", input_tokens=1000, output_tokens=500), text_turn("never")])
    sid = await session("alpha")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_cost": 0.001}})
    first = await ws.command("send", session_id=sid, text="one")
    assert (await ws.until(run_final(first["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    assert (await service.sessions.get(sid)).usage.cost == pytest.approx(0.002)  # $1 and $2 a million
    second = await ws.command("send", session_id=sid, text="two")
    final = await ws.until(run_final(second["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "error"
    assert "budget of $0.001;" in final["data"]["run"]["error"]
    assert len(provider.requests) == 1


async def test_provider_error_ends_the_run_with_its_message(env):
    provider, session, ws_for = env
    provider.turns.append(ProviderError("model overloaded, try later", http_status=529))
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "error"
    assert final["data"]["run"]["error"] == "model overloaded, try later"
    assert final["data"]["run"]["error_code"] == "provider_error"


async def test_a_message_longer_than_the_context_is_refused_before_any_request(env, service, client):
    """History gives way to a long prompt; the prompt cannot. Sent whole, a server refuses it or
    (Ollama) keeps only its end, instructions lost, and says nothing."""
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=True, context_tokens=8_000))
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="z" * 40_000)  # about 10,000 tokens
    final = await ws.until(run_final(sent["data"]["run_id"]))
    run = final["data"]["run"]
    assert run["status"] == "error" and run["error_code"] == "context_exceeded"
    assert "about 10,001 tokens" in run["error"] and "8,000-token context" in run["error"]
    assert "shorten it" in run["error"] and "declare its context_tokens" in run["error"]
    assert provider.requests == []
    # The code is kept with the reply, for a panel opened later.
    page = await (await client.get(f"/opencode/sessions/{sid}/messages")).json()
    reply = next(m for m in page["messages"] if m["role"] == "assistant")
    assert reply["status"] == "error" and reply["error_code"] == "context_exceeded"
    # A message that fits still goes.
    provider.turns.append(text_turn("fine"))
    sent = await ws.command("send", session_id=sid, text="z" * 4_000)
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed" and final["data"]["run"]["error_code"] is None


async def test_model_without_tools_runs_without_them(env, service):
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=False))
    provider.turns.append(text_turn("plain"))
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert provider.requests[0].tools == []
    assert any("no tool calling" in e["data"]["message"] for e in ws.of_type("log"))


async def test_a_money_budget_on_an_unpriced_model_is_flagged_in_the_log(env, service):
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps())  # no prices
    provider.turns.append(text_turn("free"))
    sid = await session("alpha")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_cost": 1.0}})
    sent = await ws.command("send", session_id=sid, text="go")
    assert (await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    warnings = [e["data"] for e in ws.of_type("log") if "has no price" in e["data"]["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert warnings[0]["run_id"] == sent["data"]["run_id"]


async def test_tool_results_that_outgrow_the_context_are_cut_to_fit(env, service):
    """Two 40,000-character results in a 16,384-token context: every request fits (what the
    model's server would otherwise cut from the start, instructions first), the run's prompt
    stays first, and each cut result says it was cut."""
    provider, session, ws_for = env
    service.sessions.deps.models = ScriptedResolver(provider, ModelCaps(tools=True, context_tokens=16_384))
    provider.turns.extend([tool_turn(("c1", "blob", {"n": 1})), tool_turn(("c2", "blob", {"n": 2})), text_turn("done")])
    sid = await session("alpha", "slowtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    assert (await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    assert len(provider.requests) == 3
    for request in provider.requests:
        assert sum(estimate_tokens(m.parts) for m in request.messages) <= 16_384 - REPLY_RESERVE_TOKENS
        assert request.messages[0].parts[0].text == "go"
    results = [p for m in provider.requests[2].messages for p in m.parts if isinstance(p, ToolResultPart)]
    assert [r.content[:6] for r in results] == ["blob 1", "blob 2"]
    assert "characters cut to fit the model's context]" in results[0].content
    # The stored reply keeps the whole results (the panel shows them).
    stored = [p for p in final_message(ws, sent["data"]["run_id"])["parts"] if p["type"] == "tool_result"]
    assert [len(p["content"]) for p in stored] == [40_007, 40_007]


def test_fitting_drops_earlier_exchanges_before_cutting_this_runs_results() -> None:
    call = ToolCallPart(id="c1", name="lookup", arguments={"query": "q"})
    turns = [ChatMessage("user", [TextPart(text="old " * 4000)]), ChatMessage("assistant", [TextPart(text="old answer")]),
             ChatMessage("user", [TextPart(text="now")]), ChatMessage("assistant", [call]),
             ChatMessage("user", [ToolResultPart(tool_call_id="c1", name="lookup", content="r" * 20_000)])]
    fitted, prompt_at = fit_to_context(list(turns), 2, 12_000)  # a budget of 7,904 tokens
    assert prompt_at == 0 and fitted[:2] == turns[2:4]  # the old exchange went whole
    assert fitted[2].parts[0].content == "r" * 20_000  # this run's result fits once it has gone
    fitted, _ = fit_to_context(list(turns), 2, 8_000)  # 3,904 tokens: the result is cut too
    assert fitted[2].parts[0].content.endswith("characters cut to fit the model's context]")
    assert sum(estimate_tokens(t.parts) for t in fitted) <= 8_000 - REPLY_RESERVE_TOKENS + 20
    assert turns[4].parts[0].content == "r" * 20_000  # the shared turn itself is not changed
    # Cut again (the next turn), the note counts everything the result lost, once.
    again, _ = fit_to_context([ChatMessage("user", [TextPart(text="now")])] + fitted[1:], 0, 6_000)
    content = again[2].parts[0].content
    kept = len(content.split("\n[", 1)[0])
    assert content.count("characters cut") == 1 and content.endswith(f"[{20_000 - kept} characters cut to fit the model's context]")


def test_fitting_leaves_out_a_results_images_before_cutting_its_text() -> None:
    images = [ImagePart(filename=f"{i}.png") for i in range(6)]
    turns = [ChatMessage("user", [TextPart(text="draw")]),
             ChatMessage("assistant", [ToolCallPart(id="c1", name="render", arguments={"what": "cats"})]),
             ChatMessage("user", [ToolResultPart(tool_call_id="c1", name="render", content="rendered", images=images)])]
    fitted, _ = fit_to_context(list(turns), 0, 8_000)  # 6,000 tokens of images against 3,904
    (result,) = fitted[2].parts
    assert result.images == [] and result.content == "rendered\n[6 image(s) left out to fit the model's context]"


def _parts(parts: list[Any]) -> list[tuple[str, str]]:
    """Parts (as models or JSON) as (type, text or call id)."""
    dumped = [p if isinstance(p, dict) else p.model_dump() for p in parts]
    return [(p["type"], p.get("text") or p.get("id") or p.get("tool_call_id") or "") for p in dumped]


@pytest.mark.parametrize("shape", ["text between calls", "text then calls"])
async def test_a_turns_text_and_calls_keep_the_order_they_streamed_in(env, service, shape):
    """Anthropic streams a turn's blocks in the order the model wrote them, text between calls
    included; OpenAI's text all comes before its calls. Either way the reply's parts, and the
    turn its next request sends back, are in that order, not all the text ahead of the calls."""
    provider, session, ws_for = env
    a, b = ToolCallReady("c1", "lookup", {"query": "a"}), ToolCallReady("c2", "lookup", {"query": "b"})
    streamed = [TextDelta("Look "), TextDelta("at a."), a, TextDelta("Then b."), b]
    if shape == "text then calls":
        streamed = [TextDelta("Look "), TextDelta("at a."), TextDelta("Then b."), a, b]
    provider.turns.extend([[*streamed, UsageReport(5, 5), Finish("tool_calls")], text_turn("Done.")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="look both up")
    await ws.until(run_final(sent["data"]["run_id"]))
    turn = [("text", "Look at a."), ("tool_call", "c1"), ("text", "Then b."), ("tool_call", "c2")]
    if shape == "text then calls":
        turn = [("text", "Look at a.Then b."), ("tool_call", "c1"), ("tool_call", "c2")]
    msg = final_message(ws, sent["data"]["run_id"])
    assert _parts(msg["parts"]) == turn + [("tool_result", "c1"), ("tool_result", "c2"), ("text", "Done.")]
    assert _parts(provider.requests[1].messages[1].parts) == turn
    assert [m.role for m in provider.requests[1].messages] == ["user", "assistant", "user"]
    # Read as one text (the node's `reply` output), words on either side of a call stay apart.
    said = "Look at a.\n\nThen b." if shape != "text then calls" else "Look at a.Then b."
    assert (await service.sessions.last_reply(sid))[0] == f"{said}\n\nDone."


async def test_max_turns(env, service):
    provider, session, ws_for = env
    service.sessions.deps.max_turns = 2
    provider.turns.extend([tool_turn((f"c{i}", "lookup", {"query": "x"})) for i in range(2)])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="loop")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed"
    assert "stopped after 2 turns" in final_message(ws, sent["data"]["run_id"])["parts"][-1]["text"]
    # The last request's calls are not run: no request would read what they did.
    finished = [e["data"] for e in ws.of_type("tool.finished")]
    assert [(f["call"]["id"], f["call"]["status"]) for f in finished] == [("c0", "completed"), ("c1", "aborted")]
    assert finished[1]["result"]["content"] == "not run: this reply reached its limit of 2 model requests"


async def test_ui_request_without_panel_is_a_clear_tool_error(env, client, service):
    provider, session, _ = env

    @tool(permission="read")
    async def read_canvas(ctx: ToolContext) -> dict[str, Any]:
        """Read the canvas."""
        return await ctx.ui_request("get_workflow", {})

    service.skills.register(Skill(id="canvas", name="Canvas", description="d", tools=[read_canvas]), replace=True)
    provider.turns.extend([tool_turn(("u1", "read_canvas", {})), text_turn("ok")])
    sid = await session("alpha", "canvas")
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid)  # a script, not a panel
    sent = await ws.command("send", session_id=sid, text="what is on my canvas")
    await ws.until(run_final(sent["data"]["run_id"]))
    result = ws.of_type("tool.finished")[0]["data"]["result"]
    assert result["is_error"] and "No Opencode panel" in result["content"]


async def test_ui_request_answered_by_the_panel(env, service):
    provider, session, ws_for = env

    @tool(permission="read")
    async def read_canvas(ctx: ToolContext) -> dict[str, Any]:
        """Read the canvas."""
        return await ctx.ui_request("get_workflow", {})

    service.skills.register(Skill(id="canvas", name="Canvas", description="d", tools=[read_canvas]), replace=True)
    provider.turns.extend([tool_turn(("u1", "read_canvas", {})), text_turn("ok")])
    sid = await session("alpha", "canvas")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="what is on my canvas")
    req = (await ws.until(lambda e: e["type"] == "ui.request"))["data"]
    answer = {"session_id": sid, "request_id": req["request_id"], "result": {"nodes": 3}}
    await ws.command("ui.reply", **answer, answer_id="panel-a-0001")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert ws.of_type("tool.finished")[0]["data"]["result"]["content"] == '{"nodes": 3}'
    # A panel whose connection dropped before the ack sends its answer again: taken, as before.
    again = await ws.command("ui.reply", **answer, answer_id="panel-a-0001")
    assert again["type"] == "ack"
    # The same answer from another panel (or without a name) is refused: that panel must not act on it.
    for other_id in ("panel-b-0001", None):
        frame = {"id": "x1", "type": "ui.reply", "ok": True, **answer, **({"answer_id": other_id} if other_id else {})}
        other = await ws.raw(json.dumps(frame))
        assert other["type"] == "error" and other["error"]["code"] == "not_found", other


def test_history_trimming_keeps_tool_pairs_whole() -> None:
    t = now()
    old = Message(id="m1", session_id="s", role="user", parts=[TextPart(text="x" * 40000)], created_at=t, updated_at=t)
    reply = Message(id="m2", session_id="s", role="assistant", skill="alpha", created_at=t, updated_at=t, parts=[
        ToolCallPart(id="c1", name="lookup", arguments={"query": "q"}),
        ToolResultPart(tool_call_id="c1", name="lookup", content="r"),
        ToolCallPart(id="c2", name="lookup", arguments={}),  # never answered: dropped
        TextPart(text="answer"),
    ])
    other = Message(id="m3", session_id="s", role="assistant", skill="beta", parts=[TextPart(text="not mine")],
                    created_at=t, updated_at=t)
    user = Message(id="m4", session_id="s", role="user", parts=[TextPart(text="next")], created_at=t, updated_at=t)
    turns = build_history([old, reply, other], "alpha", user, context_tokens=8000, vision=False)
    # The 10k-token message does not fit; the leading assistant turns are dropped too. The other
    # role's reply is heard, labelled, on the user's side.
    assert [t.role for t in turns] == ["user", "user"]
    assert turns[0].parts[0].text == "[@beta replied]\nnot mine"
    turns = build_history([old, reply, other], "alpha", user, context_tokens=200000, vision=False)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant", "user", "user"]
    calls = [p for t in turns for p in t.parts if isinstance(p, ToolCallPart)]
    assert [c.id for c in calls] == ["c1"]


async def test_global_rules_apply_and_persist(env, client, service):
    provider, session, ws_for = env
    r = await client.put("/opencode/permissions", json={"rules": {"edit": "allow"}})
    assert r.status == 200 and (await r.json())["rules"] == {"edit": "allow"}
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "red"})), text_turn("ok")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert not ws.of_type("permission.requested")
    assert ws.of_type("tool.finished")[0]["data"]["call"]["status"] == "completed"
    saved = (service.data_dir / "permissions.json").read_text()
    assert '"edit": "allow"' in saved
    bad = await client.put("/opencode/permissions", json={"rules": {"edit": "maybe"}})
    assert bad.status == 400


async def test_a_final_reply_the_store_refused_is_saved_once_it_recovers(env, service, monkeypatch):
    from opencode_agent.core import agent as agent_module
    from opencode_agent.core.errors import StoreUnavailable

    monkeypatch.setattr(agent_module, "_RETRY_DELAYS", (0.0, 0.0, 0.0))
    provider, session, ws_for = env
    provider.turns.append(text_turn("kept"))
    sid = await session("alpha")
    ws = await ws_for(sid)
    real_save = service.store.save_message
    failures = {"left": 2}
    recovered = asyncio.Event()

    async def flaky_save(message):
        if message.role == "assistant" and message.status == "completed":
            if failures["left"] > 0:
                failures["left"] -= 1
                raise StoreUnavailable("the disk is full")
            recovered.set()
        await real_save(message)

    monkeypatch.setattr(service.store, "save_message", flaky_save)
    sent = await ws.command("send", session_id=sid, text="go")
    await ws.until(run_final(sent["data"]["run_id"]))
    await asyncio.wait_for(recovered.wait(), 5)
    await service.store.flush()
    stored = await service.store.get_message(final_message(ws, sent["data"]["run_id"])["id"])
    assert stored is not None and stored.status == "completed" and stored.text() == "kept"


def test_delta_events_match_the_protocol_model() -> None:
    """The agent encodes deltas by hand for speed; each must still be exactly `MessageDeltaData`."""
    import json

    from opencode_agent.core.agent import AgentDeps, AgentRun, RunInput
    from opencode_agent.core.protocol import MessageDeltaData, Run, Session, Usage

    published: list[tuple[str, str]] = []

    class RecordingBus:
        def publish_json(self, session_id: str, type_: str, data_json: str) -> int:
            published.append((type_, data_json))
            return len(published)

    class NoStore:
        def queue_message(self, message: Message) -> None:
            pass

    role = Skill(id="assistant", name="Assistant", description="", kind="role", instructions="")
    session = Session(id="ses_1", created_at=now(), updated_at=now())
    run = Run(id="run_1", session_id="ses_1", message_id="msg_\"2", skill="assistant", status="working")
    user = Message(id="msg_1", session_id="ses_1", role="user", parts=[TextPart(text="hi")], status="completed",
                   created_at=now(), updated_at=now())
    deps = AgentDeps(bus=RecordingBus(), store=NoStore(), gate=None, ui=None, models=None)  # type: ignore[arg-type]
    agent = AgentRun(deps, RunInput(session=session, run=run, user_message=user, role=role, tool_skills=[],
                                    history=[], spent=Usage))
    for text in ["plain", 'quotes " and \\ backslash', "line\nbreak\ttab", "ünïcödé ✓ 🎨", "\u0000\u001f"]:
        agent._append_text(text)
    assert [t for t, _ in published] == ["message.delta"] * 5
    for (_, data_json), text in zip(published, ["plain", 'quotes " and \\ backslash', "line\nbreak\ttab",
                                                  "ünïcödé ✓ 🎨", "\u0000\u001f"]):
        data = json.loads(data_json)
        assert MessageDeltaData.model_validate(data).model_dump() == {
            "message_id": 'msg_"2', "run_id": "run_1", "skill": "assistant", "text": text}
        assert set(data) == set(MessageDeltaData.model_fields)


async def test_every_event_on_the_wire_is_a_protocol_event(env):
    """Hot-path events are built as plain dicts; each must still validate as its protocol model."""
    from opencode_agent.core.protocol import EventAdapter

    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("c1", "lookup", {"query": "x"})), text_turn("a", "b")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="go")
    await ws.until(run_final(sent["data"]["run_id"]))
    await ws.until(lambda e: e["type"] == "usage.updated")
    types = set()
    for ev in ws.events:
        EventAdapter.validate_python(ev)
        types.add(ev["type"])
    assert {"message.delta", "log", "tool.started", "tool.finished", "run.status", "usage.updated"} <= types


async def test_runs_start_while_the_user_message_commits_and_speak_only_after_it(env, service, monkeypatch):
    """The model request goes out before the user's message is committed; nothing of the run is
    published before the message is, and the order on the wire stays user message → reply → text."""
    provider, session, ws_for = env
    sid = await session("alpha")
    ws = await ws_for(sid)
    asked = asyncio.Event()

    async def turn(request: ChatRequest) -> AsyncIterator[Any]:
        asked.set()
        yield TextDelta("first")
        yield Finish("stop")

    provider.turns.append(turn)
    commit = hold_user_commits(service, monkeypatch)
    sending = asyncio.ensure_future(ws.command("send", session_id=sid, text="hi"))
    await asyncio.wait_for(asked.wait(), 5)  # the model was asked while the commit is held
    assert not ws.of_type("message.created") and not ws.of_type("message.delta")
    commit.set()
    sent = await sending
    await ws.until(run_final(sent["data"]["run_id"]))
    order = [(e["type"], e["data"].get("message", {}).get("role")) for e in ws.events
             if e.get("type") in ("message.created", "message.delta")]
    assert order[:3] == [("message.created", "user"), ("message.created", "assistant"), ("message.delta", None)]


async def test_a_user_message_the_store_refuses_leaves_no_trace_of_its_runs(env, service, monkeypatch):
    """If the user's message cannot be saved, its runs (already asking the model) are dropped:
    the upstream stream is closed, nothing but their debug log lines is published or stored, and the
    sender gets the error."""
    from opencode_agent.core.errors import StoreUnavailable

    provider, session, ws_for = env
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    asked = asyncio.Event()
    release = asyncio.Event()
    both_asked = Barrier(3)

    async def turn(request: ChatRequest) -> AsyncIterator[Any]:
        await both_asked.wait()
        await release.wait()
        yield TextDelta("never seen")
        yield Finish("stop")

    provider.by_role = lambda request: turn
    real_save = service.store.save_message

    async def refusing_save(message: Message) -> None:
        if message.role == "user":
            await asyncio.wait_for(both_asked.wait(), 5)
            asked.set()
            raise StoreUnavailable("the disk holding the Opencode database is full; free some space and try again")
        await real_save(message)

    monkeypatch.setattr(service.store, "save_message", refusing_save)
    await service.store.flush()
    before = len(await service.store.events_after(sid, 0, 10_000))
    reply = await ws.command("send", session_id=sid, text="hello")
    assert reply["error"]["code"] == "store_unavailable" and "disk" in reply["error"]["message"]
    assert asked.is_set()
    await asyncio.wait_for(service.sessions.wait_idle(sid), 5)  # the dropped runs ended...
    assert provider.closed_streams == 2  # ...and closed their upstream streams without reading them
    assert not release.is_set()
    assert not [e for e in ws.events if e.get("type") in ("message.created", "run.status", "message.delta",
                                                            "message.completed")]
    await service.store.flush()
    # Only the debug log remembers them: the model requests did go out.
    after = await service.store.events_after(sid, 0, 10_000)
    assert {e.type for e in after[before:]} == {"log"}
    page = await service.sessions.messages(sid, None, 50)
    assert page.messages == []
    # The store is back: the next message is answered normally.
    monkeypatch.setattr(service.store, "save_message", real_save)
    provider.by_role = None
    provider.turns.extend([text_turn("ok"), text_turn("ok")])
    sent = await ws.command("send", session_id=sid, text="again")
    for run_id in sent["data"]["run_ids"]:
        final = await ws.until(run_final(run_id))
        assert final["data"]["run"]["status"] == "completed"


def test_history_turns_are_reused_until_a_message_changes() -> None:
    from opencode_agent.core.agent import TurnCache

    def msg(mid: str, role: str, text: str, t: float) -> Message:
        return Message(id=mid, session_id="s", role=role, skill="alpha" if role == "assistant" else None,  # type: ignore[arg-type]
                       parts=[TextPart(text=text)], status="completed", created_at=t, updated_at=t)

    history = [msg("m1", "user", "one", 1.0), msg("m2", "assistant", "two", 2.0)]
    user = msg("m3", "user", "three", 3.0)
    cache = TurnCache()
    first = build_history(history, "alpha", user, 32000, vision=False, cache=cache)
    again = build_history(history, "alpha", user, 32000, vision=False, cache=cache)
    assert [t.parts for t in first] == [t.parts for t in again]
    assert all(a is b for a, b in zip(first, again))  # the same turns, not rebuilt
    assert build_history(history, "alpha", user, 32000, vision=False) == first  # as without a cache
    history[1] = msg("m2", "assistant", "two, edited", 4.0)
    edited = build_history(history, "alpha", user, 32000, vision=False, cache=cache)
    assert edited[1].parts[0].text == "two, edited"
    small = TurnCache(limit=2)
    build_history(history, "alpha", user, 32000, vision=False, cache=small)
    assert len(small._items) == 2  # noqa: SLF001 - bounded


async def test_usage_total_is_queued_and_a_refused_write_is_logged_not_raised(env, service, monkeypatch, caplog):
    """The session's running total joins the next group commit; if the store refuses it, the
    reply is unaffected, the total still reaches clients, and the failure is in the log."""
    from opencode_agent.core.errors import StoreUnavailable

    provider, session, ws_for = env
    provider.turns.append(text_turn("one", input_tokens=10, output_tokens=5))
    provider.turns.append(text_turn("two", input_tokens=20, output_tokens=7))
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="hi")
    await ws.until(run_final(sent["data"]["run_id"]))
    await service.store.flush()
    stored = await service.store.get_session(sid)
    assert stored is not None and stored.usage.input_tokens == 10 and stored.usage.output_tokens == 5

    def refuse(session: Any) -> None:
        raise StoreUnavailable("the store is closed")

    monkeypatch.setattr(service.store, "queue_session", refuse)
    sent = await ws.command("send", session_id=sid, text="again")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert final_message(ws, sent["data"]["run_id"])["status"] == "completed"
    usage = (await ws.until(lambda e: e["type"] == "usage.updated" and e["data"]["usage"]["input_tokens"] == 30))
    assert usage["data"]["usage"]["output_tokens"] == 12
    assert any("could not save usage" in r.getMessage() for r in caplog.records)


def test_a_user_message_that_never_ran_is_not_in_the_history() -> None:
    """An aborted queued send, or one a crash left queued (`interrupted`), was never answered:
    a later model must not take it for a prompt. A reply that was stopped keeps its place."""
    t = now()

    def msg(mid: str, role: str, status: str, text: str) -> Message:
        return Message(id=mid, session_id="s", role=role, skill="alpha" if role == "assistant" else None,
                       status=status, parts=[TextPart(text=text)], created_at=t, updated_at=t)

    history = [msg("m1", "user", "completed", "first"), msg("m2", "assistant", "aborted", "half an answer"),
               msg("m3", "user", "aborted", "cancelled while queued"),
               msg("m4", "user", "interrupted", "queued at the crash"),
               msg("m5", "user", "queued", "still waiting")]
    turns = build_history(history, "alpha", msg("m6", "user", "completed", "now"), context_tokens=8000, vision=False)
    assert [p.text for turn in turns for p in turn.parts] == ["first", "half an answer", "now"]


def test_a_chinese_chat_is_trimmed_to_the_context_as_an_english_one_is() -> None:
    """A Chinese character is a token or more to every tokenizer; counted as a quarter of one, a
    history "trimmed" to 16k tokens was 40k or more, which Ollama cuts from the start, instructions
    first, and other servers refuse."""
    t = now()
    zh = "请把这个工作流的采样步数改成三十并解释原因。" * 100  # 2,200 characters: 2,000 tokens or more
    history = [Message(id=f"m{i}", session_id="s", role="user" if i % 2 == 0 else "assistant",
                       skill=None if i % 2 == 0 else "alpha", parts=[TextPart(text=zh)], created_at=t, updated_at=t)
               for i in range(40)]
    user = Message(id="m99", session_id="s", role="user", parts=[TextPart(text="继续")], created_at=t, updated_at=t)
    turns = build_history(history, "alpha", user, context_tokens=16_384, vision=False)
    chars = sum(len(p.text) for turn in turns for p in turn.parts)
    assert chars <= 16_384 - REPLY_RESERVE_TOKENS  # at least a token a character stays within the context
    assert len(turns) >= 5  # and the history was not thrown away
    # English is counted as before: 4 characters a token.
    assert estimate_tokens([TextPart(text="x" * 4000)]) == 1001
    assert estimate_tokens([TextPart(text=zh)]) == 2201  # 3 bytes a character, a token each
    assert estimate_tokens([TextPart(text="Привет, мир")]) == 1 + 0 + 6  # 2 ASCII characters, 9 Cyrillic in 18 bytes


async def test_a_role_reads_the_other_roles_replies_and_whom_a_message_was_for(env):
    """"@beta improve what alpha said" works: beta's model reads alpha's reply, labelled; alpha's
    model later reads the message as typed, so it knows it was for beta."""
    provider, session, ws_for = env
    provider.by_role = lambda req: text_turn(f"{role_of(req)} says {len(provider.requests)}")
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="a first question")
    for run_id in sent["data"]["run_ids"]:
        await ws.until(run_final(run_id))
    sent = await ws.command("send", session_id=sid, text="@beta improve what alpha said")
    await ws.until(run_final(sent["data"]["run_id"]))
    beta = [p.text for m in provider.requests[-1].messages for p in m.parts]
    assert role_of(provider.requests[-1]) == "beta"
    assert beta[0] == "a first question" and beta[-1] == "@beta improve what alpha said"
    assert [t for t in beta if t.startswith("[@alpha replied]\nalpha says")], beta
    sent = await ws.command("send", session_id=sid, text="@alpha and now?")
    await ws.until(run_final(sent["data"]["run_id"]))
    alpha = [p.text for m in provider.requests[-1].messages for p in m.parts]
    assert "@beta improve what alpha said" in alpha and [t for t in alpha if t.startswith("[@beta replied]")]


async def test_an_always_allow_answered_during_a_run_is_not_asked_again_in_it(env, service):
    """The run reads its session as it is now, not as it was when it started."""
    service.gate.timeout = 2  # without the fix the second call asks, and times out as a deny
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "red"})), tool_turn(("p2", "paint", {"color": "blue"})),
                           text_turn("done")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint twice")
    req = (await ws.until(lambda e: e["type"] == "permission.requested"))["data"]
    await ws.command("permission.reply", session_id=sid, request_id=req["request_id"], decision="allow", remember=True)
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed"
    assert len(ws.of_type("permission.requested")) == 1
    assert [e["data"]["call"]["status"] for e in ws.of_type("tool.finished")] == ["completed", "completed"]


async def test_a_budget_set_while_a_run_goes_stops_its_next_request(env):
    """A person sets a budget to stop a tool loop that runs away: it applies at the next request."""
    provider, session, ws_for = env
    provider.turns.extend([tool_turn(("p1", "paint", {"color": "red"})), text_turn("never")])
    sid = await session("alpha", "testtools")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="paint")
    req = (await ws.until(lambda e: e["type"] == "permission.requested"))["data"]
    await ws.command("configure", session_id=sid, patch={"budget": {"max_tokens": 5}})  # the first turn used 10
    await ws.command("permission.reply", session_id=sid, request_id=req["request_id"], decision="allow")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "error" and "budget of 5 tokens" in final["data"]["run"]["error"]
    assert len(provider.requests) == 1


async def test_roles_answering_at_once_share_what_is_left_of_the_budget(env):
    provider, session, ws_for = env
    provider.by_role = lambda request: text_turn("short", input_tokens=1, output_tokens=1)
    sid = await session("alpha", "beta", "gamma")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_tokens": 600}})
    sent = await ws.command("send", session_id=sid, text="go")
    for run_id in sent["data"]["run_ids"]:
        await ws.until(run_final(run_id))
    assert sorted(r.max_tokens for r in provider.requests) == [200, 200, 200]


@pytest.mark.parametrize("text,problem", [
    ("@testtools paint it", "@testtools is a tool skill, not a role; roles: "),
    ("@alpah hello", "no role @alpah; did you mean @alpha?"),
    ("@beta @gamam hello", "no role @gamam; did you mean @gamma?"),
])
async def test_a_mention_that_looks_like_a_mistake_is_refused(env, text, problem):
    """A mistyped role would otherwise go, literally, to every role of the session (each paid for)."""
    provider, session, ws_for = env
    sid = await session("alpha", "beta", "gamma", "testtools")
    ws = await ws_for(sid)
    reply = await ws.raw(json.dumps({"id": "m1", "type": "send", "session_id": sid, "text": text}))
    assert reply["type"] == "error" and reply["error"]["code"] == "unknown_role"
    assert reply["error"]["message"].startswith(problem) and provider.requests == []


async def test_a_leading_at_word_that_is_no_role_is_the_message_s_own_text(env):
    provider, session, ws_for = env
    provider.by_role = lambda req: text_turn("ok")
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="@torch.compile makes my graph slow")
    await ws.until(run_final(sent["data"]["run_id"]))
    assert provider.requests[-1].messages[-1].parts[0].text == "@torch.compile makes my graph slow"


async def aborted_before_its_usage(env: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A reply of 40 words to a ~1,000-token prompt, aborted before the provider reported usage:
    (session id, its final run, its usage)."""
    provider, session, ws_for = env

    async def endless(_: ChatRequest) -> AsyncIterator[Any]:
        yield TextDelta("word " * 40)
        await asyncio.Event().wait()

    provider.turns.append(endless)
    sid = await session("alpha")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="x" * 4000)
    await ws.until(lambda e: e["type"] == "message.delta")
    await ws.command("abort", session_id=sid)
    final = await ws.until(run_final(sent["data"]["run_id"]))
    return sid, final["data"]["run"], final_message(ws, sent["data"]["run_id"])["usage"]


async def test_a_reply_aborted_before_its_usage_report_counts_an_estimate(env, service):
    """Providers report usage at the end of a stream, and charge an aborted one all the same: the
    reply and the session's totals (so its budget) count an estimate rather than nothing."""
    sid, run, usage = await aborted_before_its_usage(env)
    assert run["status"] == "aborted"
    assert usage["input_tokens"] >= 1000 and usage["output_tokens"] == 51
    assert (await service.sessions.get(sid)).usage.input_tokens == usage["input_tokens"]
    assert usage["cost"] == pytest.approx((usage["input_tokens"] * 1.0 + 51 * 2.0) / 1e6)  # the resolver's prices


async def test_an_estimate_is_priced_as_cache_writes_where_they_cost_more(env, service):
    """A turn cut before its usage report may have written its whole prompt to an Anthropic cache
    (1.25x the input price): its estimate is priced so, never below what it may have cost."""
    service.sessions.deps.models.caps = ModelCaps(tools=True, context_tokens=32000, input_price=3.0, output_price=15.0,
                                                  cache_read_price=0.3, cache_write_price=3.75)
    _, _, usage = await aborted_before_its_usage(env)
    assert usage["cost"] == pytest.approx((usage["input_tokens"] * 3.75 + 51 * 15.0) / 1e6)
    assert (usage["cache_read_tokens"], usage["cache_write_tokens"]) == (0, 0)  # an estimate claims no cache use


async def test_a_failed_reply_is_retried_on_its_own_prompt(env, client):
    """A reply that failed (a rate limit, a key fixed since) is answered again by its role: the
    model sees what came before the prompt, not the failed reply; later models read the new one."""
    provider, session, ws_for = env

    async def fails(_: ChatRequest) -> AsyncIterator[Any]:
        yield TextDelta("half")
        raise ProviderError("rate limited", code="provider_rate_limited")

    provider.turns.extend([text_turn("one"), fails, text_turn("two, whole"), text_turn("three")])
    sid = await session("alpha")
    ws = await ws_for(sid)
    first = await ws.command("send", session_id=sid, text="q1")
    await ws.until(run_final(first["data"]["run_id"]))
    second = await ws.command("send", session_id=sid, text="q2")
    await ws.until(run_final(second["data"]["run_id"]))
    failed = final_message(ws, second["data"]["run_id"])
    assert failed["status"] == "error" and failed["reply_to"] == second["data"]["message_id"]
    again = await ws.command("retry", session_id=sid, message_id=failed["id"])
    assert again["data"]["message_id"] == second["data"]["message_id"]
    await ws.until(run_final(again["data"]["run_id"]))
    redone = final_message(ws, again["data"]["run_id"])
    assert redone["status"] == "completed" and redone["reply_to"] == failed["reply_to"]
    assert texts_of(provider.requests[2]) == ["q1", "one", "q2"]
    third = await ws.command("send", session_id=sid, text="q3")
    await ws.until(run_final(third["data"]["run_id"]))
    assert texts_of(provider.requests[3]) == ["q1", "one", "q2", "two, whole", "q3"]
    # Over REST too; a reply that is not one, or a chat that is busy, says why.
    gate = asyncio.Event()

    async def held(_: ChatRequest) -> AsyncIterator[Any]:
        await gate.wait()
        yield TextDelta("again")
        yield Finish("stop")

    provider.turns.append(held)
    r = await client.post(f"/opencode/sessions/{sid}/retry", json={"message_id": redone["id"]})
    assert r.status == 202 and (await r.json())["message_id"] == second["data"]["message_id"]
    busy = await client.post(f"/opencode/sessions/{sid}/retry", json={"message_id": redone["id"]})
    assert busy.status == 409 and (await busy.json())["error"]["code"] == "busy"
    gate.set()
    await ws.until(run_final((await r.json())["run_id"]))
    missing = await client.post(f"/opencode/sessions/{sid}/retry", json={"message_id": third["data"]["message_id"]})
    assert missing.status == 404 and "send the message again" in (await missing.json())["error"]["message"]


def texts_of(request: ChatRequest) -> list[str]:
    return [p.text for m in request.messages for p in m.parts]


async def test_a_money_budget_on_an_unpriced_model_caps_no_reply_of_roles_at_once(env, service):
    """No price, nothing to cap by: two roles at once must not halve a cap that does not exist
    (a 2,048-token cap, then a false "budget ran out")."""
    from opencode_agent.core.protocol import ModelCaps

    provider, session, ws_for = env
    service.sessions.deps.models.caps = ModelCaps(tools=True, context_tokens=32000)
    provider.by_role = lambda request: text_turn("ok")
    sid = await session("alpha", "beta")
    ws = await ws_for(sid)
    await ws.command("configure", session_id=sid, patch={"budget": {"max_cost": 1.0}})
    sent = await ws.command("send", session_id=sid, text="go")
    for run_id in sent["data"]["run_ids"]:
        await ws.until(run_final(run_id))
    assert [r.max_tokens for r in provider.requests] == [None, None]


async def test_echo_repeats_the_words_without_their_mentions_and_a_retry_replaces_the_node_s_reply(env, service):
    provider, session, ws_for = env
    sid = await session("alpha", "echo")
    ws = await ws_for(sid)
    sent = await ws.command("send", session_id=sid, text="@echo hello there")
    await ws.until(run_final(sent["data"]["run_id"]))
    echoed = final_message(ws, sent["data"]["run_id"])
    assert echoed["parts"][0]["text"] == "hello there"
    again = await ws.command("retry", session_id=sid, message_id=echoed["id"])
    await ws.until(run_final(again["data"]["run_id"]))
    assert (await service.sessions.last_reply(sid))[0] == "hello there"  # one reply, not two joined
