"""Benchmark 2: many concurrent streaming runs through the real SessionManager; event-loop lag.

An `OpencodeService` (SQLite file, bus, sessions) runs in this process. Each of `runs` sessions
gets one in-process subscriber and one message answered by the `echo` role, whose
`echo_delay=0.02` streams 50 deltas/s; the starts are spread over one second, as users' would be.
While every run is streaming, a ticker sleeps 1 ms again and again and records its overshoot.
Baseline: the same ticker on the same, idle loop (service started, no runs).
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import LagTicker, Row, idle_lag, median


class CountingSubscriber:
    """A subscriber that keeps only what the benchmark checks: delta count and first/last time."""

    is_panel = False

    def __init__(self) -> None:
        self.deltas = 0
        self.first = 0.0
        self.last = 0.0
        self.dropped: str | None = None

    async def send(self, item: Any) -> None:
        self.send_now(item)

    def send_now(self, item: Any) -> bool:
        if item.event.type == "message.delta":
            self.deltas += 1
            self.last = item.event.ts
            if self.deltas == 1:
                self.first = self.last
        return True

    def backlog(self) -> int:
        return 0

    async def drop(self, reason: str) -> None:
        self.dropped = reason


async def _one(runs: int, seconds: float, log: Any) -> dict[str, float]:
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
                sub = CountingSubscriber()
                await svc.bus.subscribe(sid, sub, None)
                subs.append(sub)
            idle = await idle_lag(2.0)

            words = max(10, int(seconds * 50))
            text = " ".join(f"w{j}" for j in range(words))
            spread = 1.0
            ticker = LagTicker()
            t_start = time.monotonic()

            async def start(i: int) -> None:
                await asyncio.sleep(spread * i / runs)
                await svc.sessions.send(sids[i], SendBody(text=text))

            starters = [asyncio.get_running_loop().create_task(start(i)) for i in range(runs)]
            await asyncio.wait_for(asyncio.gather(*starters), 30)
            ticker.start()  # every run is streaming from here on
            t_all = time.monotonic()
            cpu0, thread0 = time.process_time(), time.thread_time()
            deltas0 = sum(s.deltas for s in subs)
            gc_pauses: list[tuple[int, float, float]] = []  # (generation, wall ms, CPU ms)
            gc_t: list[tuple[float, float]] = []

            def on_gc(phase: str, info: dict[str, Any]) -> None:
                if phase == "start":
                    gc_t.append((time.perf_counter(), time.thread_time()))
                elif gc_t:
                    w, c = gc_t.pop()
                    gc_pauses.append((info["generation"], (time.perf_counter() - w) * 1000,
                                      (time.thread_time() - c) * 1000))

            gc.callbacks.append(on_gc)
            # Stop measuring when the first run could have finished (nominal stream length).
            await asyncio.sleep(max(0.5, seconds - spread - 0.2))
            await ticker.stop()
            gc.callbacks.remove(on_gc)
            t_meas = time.monotonic() - t_all
            cpu, thread = time.process_time() - cpu0, time.thread_time() - thread0
            window_deltas = sum(s.deltas for s in subs) - deltas0
            await asyncio.wait_for(asyncio.gather(*(svc.sessions.wait_idle(s) for s in sids)), seconds * 4 + 60)
            t_done = time.monotonic()
            await svc.store.flush()

            deltas = sum(s.deltas for s in subs)
            per_run_rate = [(s.deltas - 1) / (s.last - s.first) for s in subs if s.deltas > 1 and s.last > s.first]
            expected = runs * words
            if deltas != expected:
                raise RuntimeError(f"subscribers received {deltas} deltas, expected {expected}")
            lag = ticker.summary()
            log(f"    {runs} runs: lag p50 {lag['p50_ms']:.2f} ms, p99 {lag['p99_ms']:.2f} ms, max {lag['max_ms']:.1f} ms "
                f"over {t_meas:.1f}s ({lag['n']} ticks); {median(per_run_rate):.1f} deltas/s per run; "
                f"all done in {t_done - t_start:.1f}s; idle p99 {idle['p99_ms']:.3f} ms; "
                f"{window_deltas / t_meas:,.0f} deltas/s cost {thread / max(1, window_deltas) * 1e6:.1f} µs loop CPU + "
                f"{(cpu - thread) / max(1, window_deltas) * 1e6:.1f} µs other threads each (loop thread busy "
                f"{lag['busy']:.0%}, starved {lag['starved']:.0%}); GC: {len(gc_pauses)} collections ({sum(1 for g in gc_pauses if g[0] == 2)} full), "
                f"longest {max((g[1] for g in gc_pauses), default=0):.1f} ms wall / "
                f"{max((g[2] for g in gc_pauses), default=0):.1f} ms CPU, {len(gc.get_objects()):,} objects tracked")
            return {"p99": lag["p99_ms"], "p50": lag["p50_ms"], "idle_p99": idle["p99_ms"],
                    "busy": lag["busy"], "starved": lag["starved"],
                    "gc_max": max((g[1] for g in gc_pauses), default=0.0),
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
            "≤ 5 ms", median(p99) <= 5.0, p99, idle,
            note=f"loop thread busy {median([r['busy'] for r in results]):.0%}, starved "
                 f"{median([r['starved'] for r in results]):.0%}; GC pause max {median([r['gc_max'] for r in results]):.0f} ms"),
        Row("2 streaming", "deltas/s per run (achieved)", "/s", median(rate), 50.0, "info", None, rate,
),
    ]
