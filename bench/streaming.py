"""Benchmark 2: many concurrent streaming runs through the real SessionManager; event-loop lag.

An `OpencodeService` (SQLite file, bus, sessions) runs in this process. Each of `runs` sessions
gets one in-process subscriber and one message answered by the `echo` role, whose
`echo_delay=0.02` streams 50 deltas/s; the starts are spread over one second, as users' would be.
While every run is streaming, a ticker sleeps 1 ms again and again and records its overshoot.
Baseline: the same ticker on the same, idle loop (service started, no runs).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import LagTicker, Row, idle_lag, median


async def _one(runs: int, seconds: float, log: Any) -> dict[str, float]:
    from opencode_agent.core.bus import QueueSubscriber
    from opencode_agent.core.config import Config
    from opencode_agent.core.protocol import SendBody, SessionCreate
    from opencode_agent.core.service import OpencodeService

    with tempfile.TemporaryDirectory(prefix="opencode-bench-stream-") as tmp:
        svc = OpencodeService(Config(data_dir=Path(tmp), echo_delay=0.02))
        await svc.start()
        try:
            sids = [(await svc.sessions.create(SessionCreate(title=f"s{i}", skills=["echo"]))).id for i in range(runs)]
            subs = []
            for sid in sids:
                sub = QueueSubscriber()
                await svc.bus.subscribe(sid, sub, None)
                subs.append(sub)
            idle = await idle_lag(2.0)

            words = max(10, int(seconds * 50))
            text = " ".join(f"w{j}" for j in range(words))
            spread = 1.0
            ticker = LagTicker()
            sent_at: list[float] = []
            t_start = time.monotonic()

            async def start(i: int) -> None:
                await asyncio.sleep(spread * i / runs)
                sent_at.append(time.monotonic())
                await svc.sessions.send(sids[i], SendBody(text=text))

            starters = [asyncio.get_running_loop().create_task(start(i)) for i in range(runs)]
            await asyncio.wait_for(asyncio.gather(*starters), 30)
            ticker.start()  # every run is streaming from here on
            t_all = time.monotonic()
            # Stop measuring when the first run could have finished (nominal stream length).
            await asyncio.sleep(max(0.5, seconds - spread - 0.2))
            await ticker.stop()
            t_meas = time.monotonic() - t_all
            await asyncio.wait_for(asyncio.gather(*(svc.sessions.wait_idle(s) for s in sids)), seconds * 4 + 60)
            t_done = time.monotonic()
            await svc.store.flush()

            deltas = 0
            per_run_rate = []
            for sub in subs:
                events = []
                while not sub.queue.empty():
                    ev = sub.queue.get_nowait()
                    if ev is not None:
                        events.append(ev)
                times = [e.ts for e in events if e.type == "message.delta"]
                deltas += len(times)
                if len(times) > 1:
                    per_run_rate.append((len(times) - 1) / (times[-1] - times[0]))
            expected = runs * words
            if deltas != expected:
                raise RuntimeError(f"subscribers received {deltas} deltas, expected {expected}")
            lag = ticker.summary()
            log(f"    {runs} runs: lag p50 {lag['p50_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms, max {lag['max_ms']:.1f} ms "
                f"over {t_meas:.1f}s ({lag['n']} ticks); {median(per_run_rate):.1f} deltas/s per run; "
                f"all done in {t_done - t_start:.1f}s; idle p99 {idle['p99_ms']:.3f} ms")
            return {"p99": lag["p99_ms"], "p50": lag["p50_ms"], "idle_p99": idle["p99_ms"],
                    "rate": median(per_run_rate), "total_rate": deltas / (t_done - t_start)}
        finally:
            await svc.close()


def run(quick: bool, repeat: int, log: Any = print) -> list[Row]:
    from .common import load_opencode

    load_opencode()
    runs = 20 if quick else 200
    seconds = 2.5 if quick else 6.0
    log(f"  streaming: {runs} echo runs at 50 deltas/s, {seconds:.0f}s each, SQLite store")
    results = [asyncio.run(_one(runs, seconds, log)) for _ in range(repeat)]
    p99 = [r["p99"] for r in results]
    idle = [r["idle_p99"] for r in results]
    rate = [r["rate"] for r in results]
    return [
        Row("2 streaming", f"loop lag p99, {runs} runs × 50 deltas/s", "ms", median(p99), median(idle),
            "≤ 5 ms", median(p99) <= 5.0, p99, idle, note="baseline: the same ticker on the idle loop"),
        Row("2 streaming", "deltas/s per run (achieved)", "/s", median(rate), 50.0, "info", None, rate,
            note="baseline: the nominal 1/echo_delay"),
    ]
