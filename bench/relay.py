"""Benchmark 5: a reply relayed through the whole stack, against the same client reading upstream.

Processes besides the parent: the fake upstream (`upstream.py`: OpenAI Chat Completions SSE,
200 ms to the first token, then 50 tokens/s), the Opencode server (`create_app`, real service, a
provider profile `fake` of kind `openai` pointing at the upstream, sessions using the
`assistant` role with it), a bare aiohttp relay (`bare_relay.py`), a floor relay (`floor_relay.py`:
raw asyncio protocols, the least Python can do) and a client process for each.

- direct: the client POSTs to the upstream itself and reads the SSE stream (the baseline of the
  time-to-first-token and per-token latency targets);
- relay: the client sends `send` on a WebSocket joined to its session, Opencode calls the
  upstream, and the deltas come back as `message.delta` events;
- bare: the same client and commands against the bare relay, the least an aiohttp server can do
  for the same job (the baseline of the server-side figures: loop lag and CPU per reply);
- floor: the same against the floor relay, to show what this machine allows at all (in notes).

`n` streams run at once; each does `rounds` replies back to back, and the stream starts are
spread over one reply's duration so the load is steady rather than in lock-step.
Time to first token = first content token at the client − request sent. Per-token latency =
arrival at the client − the upstream's write time carried in the token (CLOCK_MONOTONIC is
shared by every process on the machine). The Opencode server's loop lag is measured by the
1 ms ticker inside that process while the relay runs; its baseline is the same ticker on the
server's idle loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from .common import Row, Worker, median, percentile, serve_commands
from .bare_relay import bare_relay_server
from .floor_relay import floor_relay_server
from .opencode_server import opencode_server
from .upstream import request_arrived_at, tokens_sent_at, upstream_server

TTFT = 0.2
RATE = 50.0
FINAL = {"completed", "aborted", "error", "interrupted"}


class _Stream:
    """One session joined on one WebSocket, and the reply it is waiting for."""

    def __init__(self, sid: str, sink: dict[str, list[float]]) -> None:
        self.sid = sid
        self.sink = sink
        self.ws: Any = None
        self.sent_at = 0.0
        self.first = True
        self.run_id: str | None = None
        self.done: asyncio.Future[str] | None = None
        self.joined = asyncio.Event()

    def on_text(self, payload: bytes) -> None:
        now = time.monotonic()
        d = json.loads(payload)
        kind = d.get("type")
        if kind == "message.delta":
            if self.done is None:
                return
            text = d["data"]["text"]
            if self.first:
                self.first = False
                self.sink["ttft"].append((now - self.sent_at) * 1000)
                self.sink["to_upstream"].append((request_arrived_at(text) - self.sent_at) * 1000)
            self.sink["lat"].extend([(now - sent) * 1000 for sent in tokens_sent_at(text)])
        elif kind == "run.status":
            run = d["data"]["run"]
            if (self.done is not None and run["status"] in FINAL and not self.done.done()
                    and (self.run_id is None or run["id"] == self.run_id)):
                self.done.set_result(run["status"] if not run.get("error") else f"error: {run['error']}")
        elif kind == "ack":
            data = d.get("data") or {}
            if "run_id" in data:
                self.run_id = data["run_id"]
            elif "session_id" in data:
                self.joined.set()
        elif kind == "error":
            if self.done is not None and not self.done.done():
                self.done.set_result(f"error: {d.get('error')}")
            self.joined.set()


def relay_client(conn: Connection, oc_port: int, up_port: int) -> None:
    state: dict[str, Any] = {"streams": []}
    base = f"http://127.0.0.1:{oc_port}"

    async def setup() -> dict[str, Any]:
        import aiohttp

        http = state["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        r = await http.post(f"{base}/opencode/providers", json={
            "name": "fake", "kind": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "default_model": "m"})
        if r.status != 201:
            raise RuntimeError(f"create provider: {r.status} {await r.text()}")
        r = await http.put(f"{base}/opencode/providers/fake/key", json={"key": "sk-bench-not-a-real-key"})
        if r.status != 200:
            raise RuntimeError(f"put key: {r.status} {await r.text()}")
        return {"pid": os.getpid()}

    async def prepare(n: int) -> int:
        """At least `n` sessions on the fake provider, each joined on its own WebSocket."""
        from .miniws import connect as ws_connect

        http = state["http"]
        sink: dict[str, list[float]] = {"ttft": [], "lat": [], "to_upstream": []}
        state["sink"] = sink
        for s in state["streams"]:
            s.sink = sink
        while len(state["streams"]) < n:
            k = len(state["streams"])
            r = await http.post(f"{base}/opencode/sessions", json={"title": f"relay {k}"})
            if r.status != 201:
                raise RuntimeError(f"create session: {r.status} {await r.text()}")
            sid = (await r.json())["id"]
            r = await http.patch(f"{base}/opencode/sessions/{sid}",
                                 json={"provider": "fake", "model": "m", "skills": ["assistant"]})
            if r.status != 200:
                raise RuntimeError(f"configure session: {r.status} {await r.text()}")
            stream = _Stream(sid, sink)
            stream.ws = await ws_connect("127.0.0.1", oc_port, "/opencode/ws", stream.on_text)
            stream.ws.send_text(json.dumps({"id": f"j{k}", "type": "join", "session_id": sid}))
            await asyncio.wait_for(stream.joined.wait(), 10)
            state["streams"].append(stream)
        return len(state["streams"])

    async def staggered(n: int, rounds: int, one: Any, timeout: float) -> dict[str, Any]:
        cycle = TTFT + state["tokens"] / RATE
        errors: list[str] = []

        async def stream_task(k: int) -> None:
            await asyncio.sleep(cycle * k / n)
            for _ in range(rounds):
                err = await one(k)
                if err:
                    errors.append(err)

        t0, c0 = time.monotonic(), time.process_time()
        await asyncio.wait_for(asyncio.gather(*(stream_task(k) for k in range(n))), timeout)
        elapsed = time.monotonic() - t0
        return {"errors": errors[:5], "n_errors": len(errors), "elapsed": elapsed,
                "client_cpu": (time.process_time() - c0) / elapsed}

    async def direct(n: int, rounds: int, timeout: float) -> dict[str, Any]:
        http = state["http"]
        sink: dict[str, list[float]] = {"ttft": [], "lat": [], "to_upstream": []}
        url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": "hello"}]}
        headers = {"Authorization": "Bearer sk-bench-not-a-real-key", "Accept": "text/event-stream"}

        async def one(k: int) -> str | None:
            t0 = time.monotonic()
            first = True
            async with http.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    return f"HTTP {resp.status}"
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        return None
                    now = time.monotonic()
                    chunk = json.loads(payload)
                    choices = chunk.get("choices") or []
                    text = choices[0]["delta"].get("content") if choices else None
                    if text:
                        if first:
                            first = False
                            sink["ttft"].append((now - t0) * 1000)
                            sink["to_upstream"].append((request_arrived_at(text) - t0) * 1000)
                        sink["lat"].extend([(now - sent) * 1000 for sent in tokens_sent_at(text)])
            return "stream ended without [DONE]"

        res = await staggered(n, rounds, one, timeout)
        res.update(sink)
        return res

    async def relay(n: int, rounds: int, timeout: float) -> dict[str, Any]:
        sink: dict[str, list[float]] = {"ttft": [], "lat": [], "to_upstream": []}
        streams = state["streams"][:n]
        for s in streams:
            s.sink = sink
        loop = asyncio.get_running_loop()

        async def one(k: int) -> str | None:
            s = streams[k]
            s.first, s.run_id = True, None
            s.done = loop.create_future()
            s.sent_at = time.monotonic()
            s.ws.send_text(json.dumps({"id": f"s{k}", "type": "send", "session_id": s.sid, "text": "hello"}))
            status = await s.done
            s.done = None
            return None if status == "completed" else status

        res = await staggered(n, rounds, one, timeout)
        res.update(sink)
        return res

    async def handle(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "prepare":
            state["tokens"] = cmd[2]
            return await prepare(cmd[1])
        if cmd[0] == "direct":
            return await direct(*cmd[1:])
        if cmd[0] == "relay":
            return await relay(*cmd[1:])
        raise ValueError(cmd[0])

    async def teardown() -> None:
        for s in state["streams"]:
            if s.ws is not None:
                s.ws.close()
        if "http" in state:
            await state["http"].close()

    serve_commands(conn, setup, handle, teardown)


# --------------------------------------------------------------------------- orchestration


def _summ(res: dict[str, Any]) -> dict[str, float]:
    return {"server_cpu_per_reply_ms": res.get("server_cpu_per_reply_ms", math.nan),
            "ttft_p50": percentile(res["ttft"], 50), "ttft_p99": percentile(res["ttft"], 99),
            "up_p50": percentile(res["to_upstream"], 50),
            "lat_p50": percentile(res["lat"], 50), "lat_p99": percentile(res["lat"], 99),
            "n_ttft": len(res["ttft"]), "n_lat": len(res["lat"])}


def _confine(load: list[Worker], confined: bool) -> None:
    """Load generators off the servers' CPU for a relay pass, free for the direct one."""
    for w in load:
        w.call("confine", confined)


def _relay_pass(cl: Worker, srv: Worker, up: Worker, n: int, rounds: int, t: float, idle: dict[str, float]
                ) -> tuple[dict[str, Any], dict[str, float]]:
    """One relay pass through `srv` (Opencode or the bare relay), with its loop lag and CPU."""
    _confine([cl, up], True)
    srv.call("lag_start")
    up_r = up.call("cpu")
    up.call("counts")
    r = cl.call("relay", n, rounds, t, timeout=t + 30)
    r["upstream_cpu"] = (up.call("cpu") - up_r) / r["elapsed"]
    r["counts"] = up.call("counts")
    lag = srv.call("lag_stop")
    r["server_cpu_per_reply_ms"] = ((lag["cpu_share"] - idle["cpu_share"]) * r["elapsed"]
                                    / max(1, len(r["ttft"])) * 1e3)
    if r["n_errors"]:
        raise RuntimeError(f"relay, {n} streams: {r['n_errors']} errors, e.g. {r['errors']}")
    return r, lag


def _describe(name: str, s: dict[str, float], lag: dict[str, float], r: dict[str, Any]) -> str:
    return (f"{name}: TTFT p50 {s['ttft_p50']:.1f} ms (upstream reached after {s['up_p50']:.2f} ms), token latency "
            f"p50/p99 {s['lat_p50']:.2f}/{s['lat_p99']:.2f} ms, server lag p99 {lag['p99_ms']:.2f} ms, loop thread "
            f"busy {lag['busy']:.0%} starved {lag['starved']:.0%}, store backlog max {lag['store_backlog_max']:,} rows, "
            f"server CPU {lag['cpu_share']:.0%} = {r['server_cpu_per_reply_ms']:.2f} ms a reply, "
            f"upstream {r['upstream_cpu']:.0%}, client {r['client_cpu']:.0%}, "
            f"{r['counts']['requests']} requests on {r['counts']['connections']} upstream connections")


def run(quick: bool, repeat: int, log: Any = print) -> list[Row]:
    tokens = 10 if quick else 50
    levels = [1, 10, 20] if quick else [1, 50, 200]
    lag_level = 30 if quick else 300
    rounds_for = (lambda n: 4 if n == 1 else 2) if quick else (lambda n: 10 if n == 1 else 3)
    workers: list[Worker] = []
    tmp = tempfile.TemporaryDirectory(prefix="opencode-bench-relay-")
    per: dict[tuple[str, int], list[dict[str, float]]] = {}
    lags: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        up = Worker("upstream", upstream_server, ttft=TTFT, rate=RATE, tokens=tokens)
        workers.append(up)
        oc = Worker("opencode-server", opencode_server, data_dir=tmp.name)
        workers.append(oc)
        up_info, oc_info = up.wait_ready(60), oc.wait_ready(60)
        bare = Worker("bare-relay", bare_relay_server, up_port=up_info["port"])
        workers.append(bare)
        bare_info = bare.wait_ready(60)
        floor = Worker("floor-relay", floor_relay_server, up_port=up_info["port"])
        workers.append(floor)
        floor_info = floor.wait_ready(60)
        cl = Worker("relay-clients", relay_client, oc_port=oc_info["port"], up_port=up_info["port"])
        workers.append(cl)
        cl_bare = Worker("bare-relay-clients", relay_client, oc_port=bare_info["port"], up_port=up_info["port"])
        workers.append(cl_bare)
        cl_floor = Worker("floor-relay-clients", relay_client, oc_port=floor_info["port"], up_port=up_info["port"])
        workers.append(cl_floor)
        for client in (cl, cl_bare, cl_floor):
            client.wait_ready(60)
        log(f"  relay: upstream {TTFT * 1000:.0f} ms to first token, {RATE:.0f} tokens/s, {tokens} tokens a reply "
            f"(pids: opencode {oc_info['pid']}, bare relay {bare_info['pid']}, floor relay {floor_info['pid']}, "
            f"upstream {up_info['pid']}, clients {cl.info['pid']}/{cl_bare.info['pid']}/{cl_floor.info['pid']})")
        servers = (("opencode", cl, oc), ("bare", cl_bare, bare), ("floor", cl_floor, floor))

        idle: dict[str, dict[str, float]] = {}
        for name, _, srv in servers:
            srv.call("lag_start")
            time.sleep(2.0)
            idle[name] = srv.call("lag_stop")  # also the ticker's own CPU, subtracted per reply

        def timeout_for(n: int, rounds: int) -> float:
            return 60 + rounds * (TTFT + tokens / RATE) * 4 + n * 0.05

        # Warm-up (discarded): the first requests open connections and fill caches on every path.
        for _, client, _ in servers:
            client.call("prepare", 1, tokens, timeout=60)
            client.call("relay", 1, 2, 60.0, timeout=90)
        _confine([up, cl], False)
        cl.call("direct", 1, 2, 60.0, timeout=90)

        for n in levels + [lag_level]:
            rounds = rounds_for(n)
            for _, client, _ in servers:
                client.call("prepare", n, tokens, timeout=60 + n)
            for rep in range(repeat):
                t = timeout_for(n, rounds)
                lines = []
                if n != lag_level:
                    _confine([up, cl], False)
                    up_d = up.call("cpu")
                    up.call("counts")
                    d = cl.call("direct", n, rounds, t, timeout=t + 30)
                    if d["n_errors"]:
                        raise RuntimeError(f"direct, {n} streams: {d['n_errors']} errors, e.g. {d['errors']}")
                    per.setdefault(("direct", n), []).append(_summ(d))
                    lines.append(f"direct: TTFT p50 {per[('direct', n)][-1]['ttft_p50']:.1f} ms, token latency "
                                 f"p50/p99 {per[('direct', n)][-1]['lat_p50']:.2f}/{per[('direct', n)][-1]['lat_p99']:.2f} ms, "
                                 f"upstream CPU {(up.call('cpu') - up_d) / d['elapsed']:.0%}, client {d['client_cpu']:.0%}")
                for name, client, srv in servers:
                    r, lag = _relay_pass(client, srv, up, n, rounds, t, idle[name])
                    per.setdefault((name, n), []).append(_summ(r))
                    lags.setdefault((name, n), []).append(lag)
                    lines.append(_describe(name, per[(name, n)][-1], lag, r))
                log(f"    {n:3d} streams, rep {rep + 1}:\n      " + "\n      ".join(lines))
    finally:
        for w in workers:
            w.close()
        tmp.cleanup()

    def med(mode: str, n: int, key: str) -> tuple[float, list[float]]:
        vals = [x[key] for x in per.get((mode, n), [])]
        return median(vals), vals

    rows: list[Row] = []
    for n in levels:
        rv, rr = med("opencode", n, "ttft_p50")
        dv, dr = med("direct", n, "ttft_p50")
        bv, _ = med("bare", n, "ttft_p50")
        fv, _ = med("floor", n, "ttft_p50")
        rows.append(Row("5 relay", f"TTFT p50, {n} stream{'s' if n > 1 else ''}", "ms", rv, dv,
                        "≤ 1.01× baseline", rv <= 1.01 * dv, rr, dr,
                        note=f"bare relay {bv:.1f} ms ({bv / dv:.2f}×), floor relay {fv:.1f} ms ({fv / dv:.2f}×)"))
    top = levels[-1]
    for q, limit in (("p50", 0.5), ("p99", 3.0)):
        rv, rr = med("opencode", top, f"lat_{q}")
        dv, dr = med("direct", top, f"lat_{q}")
        bv, _ = med("bare", top, f"lat_{q}")
        fv, _ = med("floor", top, f"lat_{q}")
        rows.append(Row("5 relay", f"per-token latency {q}, {top} streams (added {rv - dv:+.2f} ms)", "ms", rv, dv,
                        f"added ≤ {limit:g} ms", rv - dv <= limit, rr, dr,
                        note=f"bare relay {bv:.2f} ms (added {bv - dv:+.2f} ms), "
                             f"floor relay {fv:.2f} ms (added {fv - dv:+.2f} ms)"))

    def lag_of(name: str, key: str) -> tuple[float, list[float]]:
        vals = [x[key] for x in lags[(name, lag_level)]]
        return median(vals), vals

    ov, orr = lag_of("opencode", "p99_ms")
    bv, br = lag_of("bare", "p99_ms")
    rows.append(Row("5 relay", f"server loop lag p99, {lag_level} streams (baseline: bare aiohttp relay)", "ms", ov, bv,
                    "≤ 10 ms", ov <= 10.0, orr, br,
                    note=f"floor relay {lag_of('floor', 'p99_ms')[0]:.1f} ms; loop thread busy "
                         f"{lag_of('opencode', 'busy')[0]:.0%} (bare {lag_of('bare', 'busy')[0]:.0%}, "
                         f"floor {lag_of('floor', 'busy')[0]:.0%}), "
                         f"starved {lag_of('opencode', 'starved')[0]:.0%} (bare {lag_of('bare', 'starved')[0]:.0%}); "
                         f"idle loop {idle['opencode']['p99_ms']:.2f} ms"))
    rv, rr = med("opencode", lag_level, "ttft_p50")
    bv, br = med("bare", lag_level, "ttft_p50")
    rows.append(Row("5 relay", f"TTFT p50, {lag_level} streams (baseline: bare relay)", "ms", rv, bv, "info", None, rr, br,
                    note=f"floor relay {med('floor', lag_level, 'ttft_p50')[0]:.1f} ms"))
    for n in (levels[1], top):
        rv, rr = med("opencode", n, "server_cpu_per_reply_ms")
        bv, br = med("bare", n, "server_cpu_per_reply_ms")
        rows.append(Row("5 relay", f"server CPU per reply of {tokens} tokens, {n} streams (baseline: bare relay)", "ms",
                        rv, bv, "info", None, rr, br,
                        note=f"floor relay {med('floor', n, 'server_cpu_per_reply_ms')[0]:.2f} ms"))
    return rows
