"""Load, bounded and loopback only: many sessions streaming to many sockets, then a reconnect storm.

A standalone server process (`helpers_server.StandaloneServer`) runs `SESSIONS` sessions whose echo
replies stream for `DURATION` seconds to `CLIENTS` WebSocket clients in this process (each
session watched by two or three). Every client checks every event's seq against the last it saw:
0 lost, 0 duplicated, 0 out of order. Halfway through, every client drops its socket at once and
rejoins with `after_seq`: each gap must be filled exactly once, or answered with one
`session.resync` for a client whose offset expired. The server measures its own event-loop lag
(a 1 ms ticker, `GET /_test/loop_lag`) while streaming: p99 must stay at or under 10 ms. It
also reports how much of the time its loop thread ran and how much it waited for a CPU: on a
machine whose CPUs other processes hold, a lag over the limit is reported as a skip, not a pass.

Each session streams 20 deltas a second (`OPENCODE_LOAD_WORD_DELAY`, seconds between deltas), so
200 sessions publish 4,000 events a second and the server sends about 10,000 frames a second.

CI runs the short form (5 s). The full form, 200 sessions × 500 clients for 60 s:

    OPENCODE_LOAD_FULL=1 python -m pytest tests/test_load.py -q -s

`OPENCODE_LOAD_SESSIONS`, `OPENCODE_LOAD_CLIENTS`, `OPENCODE_LOAD_SECONDS` override the sizes;
`OPENCODE_LOAD_REPORT=<file>` keeps the summary line; `OPENCODE_LOAD_DIAGNOSE=gc` (or `debug`)
makes the server print its garbage-collection pauses (or asyncio's slow callbacks).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from helpers_server import StandaloneServer

FULL = bool(os.environ.get("OPENCODE_LOAD_FULL"))
SESSIONS = int(os.environ.get("OPENCODE_LOAD_SESSIONS", "200"))
CLIENTS = int(os.environ.get("OPENCODE_LOAD_CLIENTS", "500"))
DURATION = float(os.environ.get("OPENCODE_LOAD_SECONDS", "60" if FULL else "5"))
WORD_DELAY = float(os.environ.get("OPENCODE_LOAD_WORD_DELAY", "0.05"))  # 20 deltas a second per session
WARMUP = 1.0  # the start (every send, title and run at once) is a burst, not the steady state
LAG_P99_MS = float(os.environ.get("OPENCODE_LOAD_LAG_P99_MS", "10"))
# The lag is the server's only if it got a CPU when it wanted one (see `test_server_loop_lag_p99`).
STARVED_LIMIT = float(os.environ.get("OPENCODE_LOAD_STARVED_LIMIT", "0.10"))
EXPIRED = 1_000_000  # added to the offset of one client in ten at the storm
WORDS_AT_LEAST = 10
FINAL = ("completed", "aborted", "error", "interrupted")


def expired(i: int) -> bool:
    return i % 10 == 9


pytestmark = pytest.mark.timeout(int(DURATION * 4 + 180))


@dataclass
class Checker:
    """One client's view of one session: every seq must follow the last, once, in order."""

    sid: str
    last: int | None = None
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    resyncs: int = 0
    replayed_after_rejoin: int = 0
    rejoined: bool = False
    finals: set[str] = field(default_factory=set)
    anomalies: list[str] = field(default_factory=list)

    def see(self, ev: dict[str, Any]) -> None:
        self.received += 1
        seq = ev["seq"]
        if ev["type"] in ("session.state", "session.resync"):
            self.resyncs += ev["type"] == "session.resync"
            self.last = seq
            return
        if self.last is None:
            self.lost += 1  # an event before the snapshot: impossible by protocol
        elif seq == self.last + 1:
            if self.rejoined:
                self.replayed_after_rejoin += 1
        elif seq > self.last + 1:
            self.lost += seq - self.last - 1
        else:
            self.duplicated += 1  # a seq at or below one already seen: duplicate or out of order
            if len(self.anomalies) < 5:
                self.anomalies.append(f"seq {seq} ({ev['type']}) after {self.last}, rejoined={self.rejoined}")
            return
        self.last = seq
        if ev["type"] == "run.status" and ev["data"]["run"]["status"] in FINAL:
            self.finals.add(ev["data"]["run"]["id"])


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, checker: Checker) -> None:
        self.http = http
        self.url = url
        self.checker = checker
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()
        self.closed_by_server: list[Any] = []
        self.leaving = False

    async def connect(self, after_seq: int | None) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, heartbeat=None)
        self.leaving = False
        self.joined.clear()
        join: dict[str, Any] = {"id": "join", "type": "join", "session_id": self.checker.sid}
        if after_seq is not None:
            join["after_seq"] = after_seq
        await self.ws.send_str(json.dumps(join))
        self.task = asyncio.get_running_loop().create_task(self._read(self.ws))
        await self.joined.wait()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        see = self.checker.see
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            if "seq" in ev:
                see(ev)
            elif ev.get("id") == "join":
                assert ev["type"] == "ack", ev
                self.joined.set()
        if not self.leaving:
            self.closed_by_server.append(ws.close_code)

    async def close(self) -> None:
        assert self.ws is not None and self.task is not None
        self.leaving = True
        await self.ws.close()
        await self.task

    async def drop(self) -> None:
        """Close from this side, as a browser tab losing its network would (then rejoin)."""
        await self.close()
        self.checker.rejoined = True


async def lag(http: aiohttp.ClientSession, server: StandaloneServer, reset: bool = False) -> dict[str, Any]:
    async with http.get(server.url + "/_test/loop_lag", params={"reset": "1"} if reset else {}) as r:
        return await r.json()


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class LoadRun:
    clients: list[Client]
    steady: list[dict[str, Any]]
    storm: dict[str, Any]
    storm_s: float
    elapsed: float
    rss_mb: float
    summary: str = ""

    @property
    def checkers(self) -> list[Checker]:
        return [c.checker for c in self.clients]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    """The load, once for the module's properties (its own event loop: the server is a process)."""
    tmp = tmp_path_factory.mktemp("load")
    server = StandaloneServer(tmp / "data", log_path=tmp / "server.log",
                              config={"echo_delay": WORD_DELAY, "max_concurrent_runs": SESSIONS + 8},
                              diagnose=os.environ.get("OPENCODE_LOAD_DIAGNOSE") or False)
    server.start()
    try:
        result = asyncio.run(_load(server))
    finally:
        server.stop()
    result.summary = _summary(result)
    print("\n" + result.summary)
    report = Path(os.environ.get("OPENCODE_LOAD_REPORT", tmp / "load.txt"))
    report.write_text(result.summary + "\n")
    return result


async def _load(server: StandaloneServer) -> LoadRun:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        return await _scenario(server, http)


async def _scenario(server: StandaloneServer, http: aiohttp.ClientSession) -> LoadRun:
    async def create(n: int) -> str:
        async with http.post(server.url + "/opencode/sessions", json={"skills": ["echo"], "title": f"load {n}"}) as r:
            assert r.status == 201, await r.text()
            return (await r.json())["id"]

    sids = list(await asyncio.gather(*(create(n) for n in range(SESSIONS))))
    clients = [Client(http, server.ws_url, Checker(sids[i % SESSIONS])) for i in range(CLIENTS)]
    for batch in range(0, CLIENTS, 100):
        await asyncio.gather(*(c.connect(None) for c in clients[batch:batch + 100]))

    words = int(DURATION / WORD_DELAY)
    text = " ".join(f"w{i}" for i in range(words))
    t0 = time.monotonic()

    async def send(sid: str) -> str:
        async with http.post(f"{server.url}/opencode/sessions/{sid}/messages", json={"text": text}) as r:
            assert r.status == 202, await r.text()
            return (await r.json())["run_id"]

    run_ids = dict(zip(sids, await asyncio.gather(*(send(s) for s in sids))))
    # The start (200 sends, their titles, 200 runs starting) is a burst, not the steady state.
    await asyncio.sleep(WARMUP)
    await lag(http, server, reset=True)

    # Halfway: every client drops at once, then every client rejoins at once.
    await asyncio.sleep(max(0.5, DURATION / 2 - WARMUP))
    steady_1 = await lag(http, server, reset=True)
    await asyncio.gather(*(c.drop() for c in clients))
    t_storm = time.monotonic()
    # Each rejoins from the last seq it processed (read only once its old socket is done); one in
    # ten claims an offset this server never handed out (as after a crash lost events): its offset
    # cannot be served, so it must get exactly one resync.
    await asyncio.gather(*(c.connect(c.checker.last + (EXPIRED if expired(i) else 0)) for i, c in enumerate(clients)))
    storm_s = time.monotonic() - t_storm
    storm = await lag(http, server, reset=True)

    # Until every reply has finished streaming, on every client.
    deadline = time.monotonic() + DURATION * 2 + 60
    while any(run_ids[c.checker.sid] not in c.checker.finals for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("the replies did not finish streaming")
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t0
    steady_2 = await lag(http, server)
    rss = peak_rss_mb(server.proc.pid) if server.proc else 0.0
    await asyncio.gather(*(c.close() for c in clients))
    return LoadRun(clients, [steady_1, steady_2], storm, storm_s, elapsed, rss)


def _summary(r: LoadRun) -> str:
    ks = r.checkers
    delivered = sum(k.received for k in ks)
    worst = lambda key: max(w.get(key, 0.0) for w in r.steady)  # noqa: E731
    return (f"load: {SESSIONS} sessions x {CLIENTS} clients, {1 / WORD_DELAY:.0f} deltas/s per session, "
            f"{r.elapsed:.1f}s streaming, {delivered} events delivered ({delivered / r.elapsed:.0f}/s); "
            f"lost {sum(k.lost for k in ks)}, duplicated/out of order {sum(k.duplicated for k in ks)}; "
            f"server loop lag while streaming p50 {worst('p50_ms'):.2f} ms, p99 {worst('p99_ms'):.2f} ms, "
            f"max {worst('max_ms'):.0f} ms (loop thread busy {worst('busy'):.0%}, waiting for a CPU "
            f"{worst('starved'):.0%}); reconnect storm: {CLIENTS} rejoins in {r.storm_s:.2f}s, "
            f"{sum(k.resyncs for k in ks)} resyncs, lag p99 {r.storm['p99_ms']:.0f} ms, max {r.storm['max_ms']:.0f} ms; "
            f"server peak RSS {r.rss_mb:.0f} MB")


# --------------------------------------------------------------------------- properties


def test_every_client_gets_every_event_once_in_order(run: LoadRun) -> None:
    dropped = [code for c in run.clients for code in c.closed_by_server]
    assert not dropped, f"the server dropped clients: {dropped[:10]}"
    anomalies = [f"{k.sid}: {a}" for k in run.checkers for a in k.anomalies]
    assert sum(k.lost for k in run.checkers) == 0, run.summary
    assert sum(k.duplicated for k in run.checkers) == 0, run.summary + "\n" + "\n".join(anomalies[:20])
    assert all(k.received > WORDS_AT_LEAST for k in run.checkers)


def test_reconnect_storm_fills_every_gap_once_or_resyncs_once(run: LoadRun) -> None:
    for i, k in enumerate(run.checkers):
        if expired(i):
            assert k.resyncs == 1, (k.sid, k.resyncs)
        else:
            assert k.resyncs == 0 and k.replayed_after_rejoin > 0, (k.sid, k.resyncs, k.replayed_after_rejoin)


def test_server_loop_lag_p99(run: LoadRun) -> None:
    """p99 ≤ 10 ms while streaming. Over it, the figure is the server's only if its loop thread got
    a CPU when it wanted one; on an oversubscribed machine (other processes holding the CPUs) the
    test says so and skips rather than blame the server for the machine."""
    p99 = max(w["p99_ms"] for w in run.steady)
    starved = max(w.get("starved", 0.0) for w in run.steady)
    if p99 > LAG_P99_MS and starved > STARVED_LIMIT:
        pytest.skip(f"the machine is oversubscribed: the server's loop thread waited {starved:.0%} of the time for "
                    f"a CPU, so its lag measures the machine ({run.summary})")
    assert p99 <= LAG_P99_MS, run.summary
