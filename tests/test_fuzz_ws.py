"""Property tests on WebSocket command parsing: any frame gets one answer, never a crash.

hypothesis throws random JSON, mutated valid commands (keys dropped, values of the wrong type,
huge strings, deep nesting, extra keys), raw text and binary frames at one live socket. For every
frame: exactly one `ack` or `error` comes back (never `internal_error`), the socket still answers
a ping, and a rejected command wrote nothing (rows and data files unchanged). Invalid UTF-8 in a
text frame is a protocol violation: that socket is closed with 1007, the server and every other
socket carry on. Examples per property: `OPENCODE_FUZZ_EXAMPLES` (default 120 in CI).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_trust import state
from wsclient import WsClient

EXAMPLES = int(os.environ.get("OPENCODE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("OPENCODE_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SID = "ses_fuzz"
COMMAND_TYPES = ["join", "leave", "send", "abort", "configure", "ping", "permission.reply", "ui.reply"]

# --------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=20), st.sampled_from(["", SID, "ses_nope", "../../etc", "echo"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=30,
)
huge = st.one_of(st.just("x" * 200_000), st.just("é" * 60_000), st.just("\U0001f600" * 30_000))
deep = st.integers(min_value=50, max_value=5000).map(lambda n: json.loads("[" * min(n, 900) + "]" * min(n, 900)))


def valid_command(type_: str) -> st.SearchStrategy[dict[str, Any]]:
    base = {"id": st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z"), "type": st.just(type_)}
    sid = st.sampled_from([SID, "ses_nope"])
    fields: dict[str, st.SearchStrategy[Any]] = {
        "join": {"session_id": sid, "after_seq": st.none() | st.integers(min_value=0, max_value=10**6)},
        "leave": {"session_id": st.none() | sid},
        "send": {"session_id": sid, "text": st.text(min_size=1, max_size=50),
                 "mode": st.sampled_from(["queue", "interrupt"])},
        "abort": {"session_id": sid},
        "configure": {"session_id": sid, "patch": st.fixed_dictionaries({}, optional={
            "title": st.text(max_size=50), "skills": st.just(["echo"]),
            "budget": st.fixed_dictionaries({}, optional={"max_tokens": st.integers(0, 10**9)})})},
        "ping": {},
        "permission.reply": {"session_id": sid, "request_id": st.text(min_size=1, max_size=10),
                             "decision": st.sampled_from(["allow", "deny"])},
        "ui.reply": {"session_id": sid, "request_id": st.just("req_1"), "ok": st.booleans()},
    }[type_]
    return st.fixed_dictionaries({**base, **fields})


valid_commands = st.sampled_from(COMMAND_TYPES).flatmap(valid_command)


@st.composite
def mutated_commands(draw: st.DrawFn) -> dict[str, Any]:
    cmd = dict(draw(valid_commands))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "retype", "extra", "huge", "deep"]))
        keys = sorted(cmd)
        if action == "drop" and keys:
            cmd.pop(draw(st.sampled_from(keys)))
        elif action == "retype" and keys:
            cmd[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "extra":
            cmd[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "huge" and keys:
            cmd[draw(st.sampled_from(keys))] = draw(huge)
        elif action == "deep" and keys:
            cmd[draw(st.sampled_from(keys))] = draw(deep)
    return cmd


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def fuzz(client: Any, service: Any) -> tuple[Any, Any, WsClient]:
    r = await client.post("/opencode/sessions", json={"id": SID, "skills": ["echo"]})
    assert r.status == 201
    ws = WsClient(await client.ws_connect("/opencode/ws", max_msg_size=0))
    return client, service, ws


async def settle(service: Any) -> None:
    """Let accepted sends finish so the next example starts from a quiet store."""
    await service.sessions.wait_idle(SID)
    await service.store.flush()


async def check_one_answer(service: Any, ws: WsClient, frame: str | bytes) -> dict[str, Any]:
    await settle(service)
    before = await state(service)
    reply = await ws.raw(frame)
    assert reply["type"] in ("ack", "error"), reply
    if reply["type"] == "error":
        assert reply["error"]["code"] != "internal_error", reply
        assert len(json.dumps(reply)) < 20_000, "an error reply must not echo a huge input"
        await settle(service)
        assert await state(service) == before, f"rejected frame wrote something: {reply}"
    pong = await ws.command("ping")
    assert pong["type"] == "ack"
    return reply


# --------------------------------------------------------------------------- properties


@FUZZ
@given(value=json_values)
async def test_any_json_value_gets_one_answer(fuzz: Any, value: Any) -> None:
    _, service, ws = fuzz
    await check_one_answer(service, ws, json.dumps(value))


@FUZZ
@given(cmd=mutated_commands())
async def test_mutated_commands_get_one_answer(fuzz: Any, cmd: dict[str, Any]) -> None:
    _, service, ws = fuzz
    await check_one_answer(service, ws, json.dumps(cmd))


@FUZZ
@given(cmd=valid_commands)
async def test_valid_commands_are_acked_or_refused_cleanly(fuzz: Any, cmd: dict[str, Any]) -> None:
    _, service, ws = fuzz
    reply = await check_one_answer(service, ws, json.dumps(cmd))
    if reply["type"] == "error":
        assert reply["error"]["code"] in {"not_found", "validation_error", "empty_message", "unknown_skill"}, reply
    on_our_session = cmd.get("session_id", SID) == SID
    must_ack = cmd["type"] in ("ping", "join", "leave", "abort", "configure") or (
        cmd["type"] == "send" and cmd["text"].strip())
    if on_our_session and must_ack:
        assert reply["type"] == "ack", (cmd, reply)


@FUZZ
@given(text=st.text(max_size=300))
async def test_arbitrary_text_frames(fuzz: Any, text: str) -> None:
    _, service, ws = fuzz
    await check_one_answer(service, ws, text)


@FUZZ
@given(data=st.binary(max_size=2000))
async def test_binary_frames_are_refused(fuzz: Any, data: bytes) -> None:
    _, service, ws = fuzz
    reply = await check_one_answer(service, ws, data)
    assert reply["error"]["code"] == "binary_frame"


@pytest.mark.parametrize("frame", [
    "[" * 100_000,  # deeper than any JSON parser recurses
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    json.dumps({"id": "d", "type": "configure", "session_id": SID, "patch": json.loads("[" * 800 + "]" * 800)}),
    json.dumps({"id": "s", "type": "send", "session_id": SID, "text": "x" * 100_001}),
    json.dumps({"id": "u", "type": "send", "session_id": SID, "text": "lone \ud800 surrogate"}),
    json.dumps({"id": "u2", "type": "configure", "session_id": SID, "patch": {"title": "\udfff"}}),
    json.dumps({"id": "\ud800", "type": "ping"}),
    json.dumps({"id": "n", "type": "join", "session_id": SID, "after_seq": 2**70}),
    '{"id": "nan", "type": "configure", "session_id": "' + SID + '", "patch": {"budget": {"max_cost": NaN}}}',
    '{"id": "inf", "type": "configure", "session_id": "' + SID + '", "patch": {"budget": {"max_cost": Infinity}}}',
    '{"id": "dup", "type": "ping", "type": "send"}',
    "\x00",
    "\ufeff{}",
])
async def test_nasty_frames(fuzz: Any, frame: str) -> None:
    _, service, ws = fuzz
    await check_one_answer(service, ws, frame)
    # Whatever was accepted must still read back and snapshot.
    other = WsClient(await fuzz[0].ws_connect("/opencode/ws"))
    assert (await other.command("join", session_id=SID))["type"] == "ack"
    assert other.of_type("session.state")
    r = await fuzz[0].get(f"/opencode/sessions/{SID}/export")
    assert r.status == 200


async def test_invalid_utf8_closes_only_that_socket(fuzz: Any) -> None:
    client, service, ws = fuzz
    bystander = WsClient(await client.ws_connect("/opencode/ws"))
    await bystander.command("join", session_id=SID)
    before = await state(service)
    # aiohttp's client only sends valid text; write the frame below its API.
    await ws.ws._writer.send_frame(b'{"id":"x","type":"ping","p":"\xff\xfe"}', WSMsgType.TEXT)  # noqa: SLF001
    msg = await ws.ws.receive()
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.ws.close_code == 1007
    assert await state(service) == before
    assert (await bystander.command("ping"))["type"] == "ack"
    fresh = WsClient(await client.ws_connect("/opencode/ws"))
    assert (await fresh.command("ping"))["type"] == "ack"


async def test_many_bad_frames_then_real_work(fuzz: Any) -> None:
    """After a burst of garbage the same socket still streams a reply in order."""
    _, service, ws = fuzz
    for i in range(200):
        await ws.ws.send_str("{" * (i % 7) + "garbage")
    errors = 0
    while errors < 200:
        await ws._read_one()  # noqa: SLF001
        errors = len(ws.replies)
    assert all(r["error"]["code"] == "bad_json" for r in ws.replies.values())
    ws.replies.clear()
    await ws.command("join", session_id=SID)
    sent = await ws.command("send", session_id=SID, text="still alive here")
    final = await ws.until(lambda e: e["type"] == "run.status" and e["data"]["run"]["id"] == sent["data"]["run_id"]
                           and e["data"]["run"]["status"] == "completed")
    seqs = [e["seq"] for e in ws.events if e["type"] != "session.state"]
    assert seqs == sorted(set(seqs)) and final
