"""What every benchmark shares: loading Opencode, statistics, the loop-lag ticker, result rows,
machine facts, and worker processes driven over a pipe.

Every wait here has a deadline: a worker that does not answer in time is killed, and the
benchmark fails with a clear message instead of hanging.
Imports nothing from Opencode at module level (workers load it themselves).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "opencode_agent"


def load_opencode() -> None:
    """Make this checkout's root importable as `opencode_agent` (as ComfyUI and the tests do).

    Always this checkout, never an installed copy: with `pip install -e .` done in another work
    tree, `import opencode_agent` would find that tree, and a benchmark run from this one would
    measure the other's code without a word (it did, for two sessions' A/B runs)."""
    loaded = sys.modules.get(ALIAS)
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or ".").resolve().parent
        if where != ROOT:
            raise ImportError(f"{ALIAS} is already imported from {where}, not from this checkout ({ROOT})")
        return
    spec = importlib.util.spec_from_file_location(
        ALIAS, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ROOT} as {ALIAS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[ALIAS] = module
    spec.loader.exec_module(module)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


class LagTicker:
    """Sleeps `interval` again and again and records how late each wake-up is (ms).

    The overshoot of a 1 ms sleep is how long a ready callback waits for the loop: the event-loop
    lag every other coroutine on this loop sees.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._recording = False
        self._t0 = 0.0
        self._sched0: tuple[float, float] | None = None
        self.starved = math.nan  # share of the window the loop thread was runnable but had no CPU
        self.busy = math.nan  # share of the window the loop thread ran

    def start(self) -> None:
        """Call from the loop's thread (the run-queue figures are that thread's)."""
        self.samples = []
        self._recording = True
        self._t0 = time.monotonic()
        self._sched0 = thread_schedstat()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bench-lag-ticker")

    async def _run(self) -> None:
        clock = time.perf_counter
        interval = self.interval
        while self._recording:
            t0 = clock()
            await asyncio.sleep(interval)
            self.samples.append((clock() - t0 - interval) * 1000.0)

    async def stop(self) -> list[float]:
        self._recording = False
        if self._task is not None:
            await asyncio.wait_for(self._task, 5)
            self._task = None
        sched = thread_schedstat()
        wall = time.monotonic() - self._t0
        if sched is not None and self._sched0 is not None and wall > 0:
            self.busy = (sched[0] - self._sched0[0]) / wall
            self.starved = (sched[1] - self._sched0[1]) / wall
        return self.samples

    def summary(self) -> dict[str, float]:
        out = lag_summary(self.samples)
        out.update(busy=self.busy, starved=self.starved)
        return out


class ServerWindow:
    """A server process's measuring window: the lag ticker on its loop and its CPU share.

    `stop()` returns the ticker's summary plus `cpu_share`, the process's CPU time (all threads)
    over the window's wall time, the ticker's own included.
    """

    def __init__(self) -> None:
        self.ticker = LagTicker()
        self._cpu0 = time.process_time()
        self._t0 = time.monotonic()
        self.ticker.start()

    async def stop(self) -> dict[str, float]:
        await self.ticker.stop()
        summary = self.ticker.summary()
        summary["cpu_share"] = (time.process_time() - self._cpu0) / (time.monotonic() - self._t0)
        return summary


async def serve_on_loopback(app: Any) -> Any:
    """Start `app` (an `aiohttp.web.Application`) on 127.0.0.1 and a free port; its runner."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    return runner


def thread_schedstat() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of the calling thread; Linux only."""
    try:
        run_ns, wait_ns, _ = Path("/proc/thread-self/schedstat").read_text().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return None


def lag_summary(samples: Sequence[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples) if samples else math.nan}


async def idle_lag(seconds: float) -> dict[str, float]:
    """The ticker alone on an idle loop: the floor every lag figure is compared against."""
    ticker = LagTicker()
    ticker.start()
    await asyncio.sleep(seconds)
    await ticker.stop()
    return ticker.summary()


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table. `value` and `baseline` are medians over the repeats."""

    bench: str
    figure: str
    unit: str
    value: float
    baseline: float | None
    target: str
    passed: bool | None  # None: informational, no target
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    note: str = ""
    # When Opencode and the baseline ran in adjacent pairs: the median of the per-pair ratios,
    # steadier than the ratio of the medians when the machine's load drifts.
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline) or math.isnan(self.value):
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    a = abs(value)
    if a >= 1000:
        text = f"{value:,.0f}"
    elif a >= 100:
        text = f"{value:.0f}"
    elif a >= 10:
        text = f"{value:.1f}"
    elif a >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import aiosqlite
    import sqlite3

    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gb = math.nan
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_gb, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "aiohttp": aiohttp.__version__, "aiosqlite": getattr(aiosqlite, "__version__", "?"),
        "sqlite": sqlite3.sqlite_version,
    }


# --------------------------------------------------------------------------- worker processes


_ALL_CPUS: set[int] | None = None


def confine_load_generator(confined: bool = True) -> None:
    """Keep this load-generating process (fake upstream, clients) off the servers' CPUs, or free it.

    In production the model runs on another machine and the clients are browsers elsewhere;
    here they share a 2-core machine with the server measured, and the scheduler would take
    turns between them. Confined to the last CPU, they leave the others to the servers (which
    are not pinned and may still use the last CPU when it is free). A pass with no server in it
    (the direct baseline) frees them again, so that baseline is the best this machine gives.
    Off with `OPENCODE_BENCH_NO_PIN=1`; a no-op on one CPU or where affinity is not supported.
    """
    global _ALL_CPUS
    if not hasattr(os, "sched_getaffinity") or os.environ.get("OPENCODE_BENCH_NO_PIN"):
        return
    if _ALL_CPUS is None:
        _ALL_CPUS = set(os.sched_getaffinity(0))
    if len(_ALL_CPUS) >= 2:
        os.sched_setaffinity(0, {max(_ALL_CPUS)} if confined else _ALL_CPUS)


class WorkerError(RuntimeError):
    pass


# glibc's threshold for serving an allocation with its own mmap, fixed for every worker. Left
# dynamic, it starts at 128 KiB and rises only when such a block is freed, so whether asyncio's
# 256 KiB receive buffer (one a socket read) costs an mmap, a page fault, an mremap and a munmap
# depended on each process's allocation history: measured 2026-12-01, the bare relay paid them on
# every read and the Opencode server did not (bare relay CPU a reply at 200 streams 6.6-6.75 ms
# with it, 6.2 ms without). Fixed, every server pays the same for a read.
MALLOC_MMAP_THRESHOLD = str(4 << 20)


class Worker:
    """A child process running `target(conn, **kwargs)`, answering one reply per command.

    Spawned (not forked) so no parent thread or loop leaks into it; every worker starts with the
    same allocator settings (`MALLOC_MMAP_THRESHOLD`). The child sends `("ready", info)` once it
    is set up; `call()` sends a command and waits for the reply.
    """

    def __init__(self, name: str, target: Callable[..., None], **kwargs: Any) -> None:
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD)  # read by the child's libc at start
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,), kwargs=kwargs, name=name, daemon=True)
        self.proc.start()
        child.close()
        self.info: Any = None

    def wait_ready(self, timeout: float) -> Any:
        self.info = self.recv(timeout, "start")
        return self.info

    def call(self, *cmd: Any, timeout: float = 60.0) -> Any:
        self.conn.send(cmd)
        return self.recv(timeout, cmd[0])

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    def recv(self, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer to {what!r} within {timeout:.0f}s")
            if self.conn.poll(min(left, 0.5)):
                try:
                    kind, payload = self.conn.recv()
                except EOFError:
                    raise WorkerError(f"{self.name} exited (code {self.proc.exitcode}) during {what!r}") from None
                if kind == "error":
                    raise WorkerError(f"{self.name} failed during {what!r}:\n{payload}")
                return payload
            if not self.proc.is_alive():
                raise WorkerError(f"{self.name} exited (code {self.proc.exitcode}) during {what!r}")

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)
        self.conn.close()


def serve_commands(conn: Connection, setup: Callable[[], Awaitable[Any]],
                   handle: Callable[[tuple[Any, ...]], Awaitable[Any]],
                   teardown: Callable[[], Awaitable[None]] | None = None) -> None:
    """The child side of `Worker`: run `setup`, then answer commands until `stop`.

    Commands are read by a thread blocked in `recv` (it holds no GIL while waiting), so the
    measured event loop does no polling of its own.
    """
    import traceback

    async def main() -> None:
        try:
            info = await setup()
            conn.send(("ready", info))
            while True:
                try:
                    cmd = await asyncio.to_thread(conn.recv)
                except (EOFError, OSError):
                    break  # the parent went away
                if cmd[0] == "stop":
                    break
                try:
                    if cmd[0] == "confine":  # any worker: see `confine_load_generator`
                        confine_load_generator(cmd[1])
                        conn.send(("ok", None))
                        continue
                    conn.send(("ok", await handle(cmd)))
                except Exception:  # noqa: BLE001 - report to the parent, keep serving
                    conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            try:
                conn.send(("error", traceback.format_exc()))
            except (BrokenPipeError, OSError):
                pass
        finally:
            if teardown is not None:
                try:
                    await asyncio.wait_for(teardown(), 20)
                except Exception:  # noqa: BLE001
                    pass

    try:
        asyncio.run(main())
    except (EOFError, KeyboardInterrupt):
        pass
