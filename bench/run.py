"""Run Opencode's benchmarks and print every figure next to a baseline measured in the same run.

    python -m bench                 # the documented full run (about 9 minutes on 2 cores)
    python -m bench --quick         # small sizes, for a CI smoke test (about a minute)
    python -m bench --repeat 5 --only fanout,relay

Each benchmark runs `--repeat` times; the table shows medians. A full run writes
`bench/results/<date>.md` and `.json` (a quick run only with `--save`). Exit status: 0 when every
benchmark ran (and, with `--strict`, met its target), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench.common import ROOT, Row, fmt, machine_info  # noqa: E402

BENCHMARKS: dict[str, tuple[str, str]] = {
    # id: (module, function)
    "fanout": ("bench.fanout", "run"),
    "streaming": ("bench.streaming", "run"),
    "writes": ("bench.persistence", "run_writes"),
    "lastpage": ("bench.persistence", "run_last_page"),
    "relay": ("bench.relay", "run"),
}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (any process) over `seconds`, from /proc/stat; NaN elsewhere."""
    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle
    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return math.nan
    return 1 - (i1 - i0) / max(1, t1 - t0)


def _settle(limit: float, threshold: float = 0.25) -> str:
    """Wait (at most `limit` seconds) until other processes leave the CPUs mostly idle."""
    deadline = time.monotonic() + limit
    busy = _cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = _cpu_busy(2.0)
    return f"CPUs {busy:.0%} busy before start" + ("" if busy <= threshold else f" (waited {limit:.0f}s for them to settle)")


class _Deadline(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Deadline("the run passed its --timeout")


BASELINES = {
    "1 fan-out": "a bare aiohttp server broadcasting the same envelopes with `for ws in clients: await "
                 "ws.send_str(s)`, its sockets in the same client process",
    "2 streaming": "the same 1 ms ticker on the same loop with the service idle; deltas: the nominal 1/echo_delay",
    "3 persistence": "raw aiosqlite `executemany` of the same pre-serialised rows, 100 a transaction, same "
                     "pragmas; lag: raw inserts offered at the same rate",
    "4 last page": "the same indexed query through aiosqlite in one round trip, rows left as tuples",
    "5 relay": "the same client process reading the fake upstream directly; lag: the same ticker on the idle "
               "server loop",
}


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | figure | Opencode | baseline | ratio | target | result | conditions |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        ratio = r.ratio
        result = "—" if r.passed is None else ("PASS" if r.passed else "**FAIL**")
        note = r.note
        if note == "error":
            result, note = "**ERROR**", ""
        lines.append(f"| {r.bench} | {r.figure} | {fmt(r.value, r.unit)} | {fmt(r.baseline, r.unit)} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}×'} | {r.target} | {result} | {note} |")
    benches = sorted({r.bench for r in rows if r.bench in BASELINES})
    legend = "\n".join(f"- {b}: {BASELINES[b]}" for b in benches)
    return "\n".join(lines) + ("\n\nBaselines:\n" + legend if legend else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds per benchmark), for CI smoke")
    ap.add_argument("--repeat", type=int, default=None, help="runs per benchmark; the median is reported "
                    "(default 3, quick 1)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds for the whole run (default 2400, quick 600)")
    ap.add_argument("--save", action="store_true", help="write bench/results/ even for a quick run")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--settle", type=float, default=None, help="before each benchmark, wait up to this many "
                    "seconds for the CPUs to be at most 25%% busy with other work (default 90, quick 0)")
    args = ap.parse_args(argv)

    repeat = args.repeat or (1 if args.quick else 3)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHMARKS)
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    timeout = args.timeout or (600 if args.quick else 2400)

    started = dt.datetime.now().astimezone()
    machine = machine_info()
    header = (f"Opencode benchmarks — {started:%Y-%m-%d %H:%M %Z} — {'quick' if args.quick else 'full'} run, "
              f"median of {repeat}\n"
              f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['mem_gb']} GB, {machine['os']}; "
              f"Python {machine['python']}, aiohttp {machine['aiohttp']}, aiosqlite {machine['aiosqlite']}, "
              f"SQLite {machine['sqlite']}\nload average at start: {_loadavg()}")
    print(header, flush=True)

    import importlib

    rows: list[Row] = []
    errors = 0
    timings: dict[str, float] = {}
    conditions: dict[str, str] = {}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(timeout))
    try:
        for name in chosen:
            module, func = BENCHMARKS[name]
            settle = args.settle if args.settle is not None else (0 if args.quick else 90)
            settled = _settle(settle) if settle > 0 else ""
            conditions[name] = f"load average {_loadavg()}" + (f"; {settled}" if settled else "")
            print(f"\n[{name}] {conditions[name]}", flush=True)
            t0 = time.monotonic()
            try:
                fn: Callable[..., list[Row]] = getattr(importlib.import_module(module), func)
                rows += fn(args.quick, repeat, log=lambda s: print(s, flush=True))
            except _Deadline:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                errors += 1
                traceback.print_exc()
                rows.append(Row(name, f"{type(exc).__name__}: {str(exc)[:160]}", "", math.nan, None, "—", False,
                                note="error"))
            timings[name] = time.monotonic() - t0
            print(f"[{name}] {timings[name]:.0f}s", flush=True)
    except _Deadline as exc:
        errors += 1
        rows.append(Row("run", str(exc), "", math.nan, None, "—", False, note="error"))
    finally:
        signal.alarm(0)

    finished = dt.datetime.now().astimezone()
    footer = ("Before each benchmark: " + "; ".join(f"{k}: {v}" for k, v in conditions.items())
              + f"\nload average at end: {_loadavg()}; total {(finished - started).total_seconds():.0f}s")
    text = table(rows)
    print("\n" + text + "\n\n" + footer, flush=True)

    if (not args.quick or args.save) and not args.no_save:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{started:%Y-%m-%d}" + ("-quick" if args.quick else "")
        command = "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        (out / f"{stem}.md").write_text(
            f"# {header.splitlines()[0]}\n\n```\n{command}\n```\n\n" + "\n".join(header.splitlines()[1:]) + "\n\n"
            + text + "\n\n" + footer + "\n", encoding="utf-8")
        (out / f"{stem}.json").write_text(json.dumps({
            "started": started.isoformat(), "finished": finished.isoformat(), "quick": args.quick,
            "repeat": repeat, "command": command, "machine": machine, "pid": os.getpid(),
            "seconds": timings, "conditions": conditions, "rows": [r.as_dict() for r in rows],
        }, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)) + "\n",
            encoding="utf-8")
        print(f"wrote {out / (stem + '.md')} and .json", flush=True)

    missed = sum(1 for r in rows if r.passed is False and r.note != "error")
    if errors:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
