"""SIGKILL of a serving process mid-stream, then a restart on the same data directory.

A standalone server (a real process, `helpers_server.StandaloneServer`) streams replies into
several sessions while each also holds a finished exchange and a queued message. It is killed
with SIGKILL (no shutdown code runs) and started again on the same data dir. Then: every finished
message is there, whole; each streaming reply is kept up to its last checkpoint (a prefix of what
was streamed) and marked `interrupted`; the queued send is `interrupted` too; no run is left
working; the sessions take new messages at once; and a client that rejoins with the `after_seq`
it had is never handed a seq the dead process already used for another event.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers_server import StandaloneServer
from wsclient import WsClient, run_final

SESSIONS = 4
LONG = " ".join(f"word{i}" for i in range(400))  # 400 deltas at 20 ms: ~8 s, killed long before the end
CONFIG = {"echo_delay": 0.02, "checkpoint_interval": 0.1, "commit_max_delay": 0.01}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: Any, server: StandaloneServer, method: str, path: str, body: Any = None,
               status: int = 200) -> Any:
    async with http.request(method, server.url + path, json=body) as r:
        text = await r.text()
        assert r.status == status, (method, path, r.status, text)
        return json.loads(text)


async def connect(http: Any, server: StandaloneServer) -> WsClient:
    return WsClient(await http.ws_connect(server.ws_url))


async def test_sigkill_mid_stream_then_restart(tmp_path: Path, http: Any) -> None:
    server = StandaloneServer(tmp_path / "data", config=CONFIG)
    await asyncio.to_thread(server.start)
    try:
        await _scenario(server, http)
    finally:
        await asyncio.to_thread(server.stop)


async def _scenario(server: StandaloneServer, http: Any) -> None:
    sids, sockets, streaming, queued, finished = [], [], {}, {}, {}
    for n in range(SESSIONS):
        sid = (await call(http, server, "POST", "/opencode/sessions", {"skills": ["echo"]}, 201))["id"]
        ws = await connect(http, server)
        await ws.command("join", session_id=sid)
        done = await ws.command("send", session_id=sid, text=f"finished exchange {n}")
        await ws.until(run_final(done["data"]["run_id"]))
        finished[sid] = f"finished exchange {n}"
        sent = await ws.command("send", session_id=sid, text=LONG)
        streaming[sid] = sent["data"]
        queued[sid] = (await ws.command("send", session_id=sid, text="waiting my turn"))["data"]
        assert queued[sid]["queued"] is True
        sids.append(sid)
        sockets.append(ws)
    # Let every reply stream past a few checkpoints (100 ms apart, committed within 10 ms).
    for ws, sid in zip(sockets, sids):
        await ws.until(lambda e, sid=sid: e["type"] == "message.delta" and e["data"]["text"].strip() == "word40")
    seen_text = {sid: "".join(e["data"]["text"] for e in ws.of_type("message.delta")
                              if e["data"]["run_id"] == streaming[sid]["run_id"])
                 for sid, ws in zip(sids, sockets)}
    seen_seq = {sid: max(e["seq"] for e in ws.events) for sid, ws in zip(sids, sockets)}
    await asyncio.to_thread(server.kill)
    assert not server.alive
    for ws in sockets:
        await ws.ws.close()

    t_restart = time.monotonic()
    await asyncio.to_thread(server.start)  # same data dir, same port
    ready_s = time.monotonic() - t_restart
    listed = await call(http, server, "GET", "/opencode/sessions")
    assert {s["id"] for s in listed["sessions"]} == set(sids)
    for sid in sids:
        page = await call(http, server, "GET", f"/opencode/sessions/{sid}/messages")
        msgs = page["messages"]
        text = lambda m: "".join(p.get("text", "") for p in m["parts"])  # noqa: E731
        # No finished message lost, both sides whole.
        assert [(m["role"], m["status"], text(m)) for m in msgs[:2]] == [
            ("user", "completed", finished[sid]), ("assistant", "completed", finished[sid])]
        user_long, reply, user_queued = msgs[2], msgs[3], msgs[4]
        assert (user_long["status"], text(user_long)) == ("completed", LONG)
        # The streaming reply: kept up to its last checkpoint, marked interrupted.
        assert reply["run_id"] == streaming[sid]["run_id"]
        assert reply["status"] == "interrupted"
        kept = text(reply)
        assert kept and LONG.startswith(kept) and seen_text[sid].startswith("word0 word1"), kept[:80]
        assert len(kept) >= len("word0 word1 word2"), "at least one checkpoint was written"
        assert len(kept) < len(LONG)
        # The queued send never ran: interrupted, not left queued.
        assert (user_queued["status"], text(user_queued)) == ("interrupted", "waiting my turn")
        assert len(msgs) == 5

    # No run left working, and the sessions are usable at once.
    first_reply_s = None
    for sid in sids:
        ws = await connect(http, server)
        await ws.command("join", session_id=sid)
        state = ws.of_type("session.state")[0]["data"]
        assert state["runs"] == []
        assert all(m["status"] not in ("streaming", "queued") for m in state["messages"])
        sent = await ws.command("send", session_id=sid, text="alive after the crash")
        final = await ws.until(run_final(sent["data"]["run_id"]))
        assert final["data"]["run"]["status"] == "completed"
        first_reply_s = first_reply_s or time.monotonic() - t_restart
        await ws.ws.close()
    print(f"\nSIGKILL: {SESSIONS} sessions streaming; restart ready in {ready_s:.2f}s, first new reply "
          f"{first_reply_s:.2f}s after the restart began")

    # A client rejoining with the offset it had before the crash: the dead process may have
    # numbered events it never committed, and the new process has numbered new events since.
    # It must get one resync, or events that really follow what it saw: every seq it holds must
    # mean the same event in the server's log.
    for sid, old in zip(sids, sockets):
        ws = await connect(http, server)
        await ws.command("join", session_id=sid, after_seq=seen_seq[sid])
        sent = await ws.command("send", session_id=sid, text="one more")
        await ws.until(run_final(sent["data"]["run_id"]))
        if ws.of_type("session.resync"):
            assert ws.events[0]["type"] == "session.resync" and len(ws.of_type("session.resync")) == 1
            await ws.ws.close()
            continue
        log = await server_log(http, server, sid, ws.events[-1]["seq"])
        held = {e["seq"]: (e["type"], e["data"]) for e in old.events + ws.events if e["seq"] > 0
                and e["type"] not in ("session.state", "session.resync")}
        mismatched = sorted(seq for seq, ev in log.items() if seq in held and held[seq] != ev)
        missing = sorted(seq for seq in log if seq not in held and seq > min(held))
        assert not mismatched and not missing, (
            f"{sid}: seqs reused after the crash; client holds other events at {mismatched[:5]}, "
            f"never got {missing[:5]}")
        await ws.ws.close()


async def server_log(http: Any, server: StandaloneServer, sid: str, upto: int) -> dict[int, tuple[str, Any]]:
    """Every stored event of a session up to seq `upto`, by seq (a join from offset 0 replays them)."""
    ws = await connect(http, server)
    await ws.command("join", session_id=sid, after_seq=0)
    if not ws.of_type("session.resync"):
        await ws.until(lambda e: e["seq"] >= upto)
    await ws.ws.close()
    return {e["seq"]: (e["type"], e["data"]) for e in ws.events if e["type"] != "session.resync"}
