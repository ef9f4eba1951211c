"""How steep the relay's knee is: the bare relay with extra CPU a reply, next to Opencode.

    python -m bench.knee                 # 200 streams, spins of 0, 1.2 and 2.4 ms, 2 repeats (~4 min)
    python -m bench.knee --streams 200 --spin 0,0.6,1.2 --repeat 3

The relay benchmark (`relay.py`) compares Opencode with a bare aiohttp relay that does nothing for
a reply but the relay itself. This one asks how much of Opencode's result at 200 streams its own
per-reply work explains: the same bare relay burns `spin` ms of CPU for each reply (half as it
starts, half as it ends; `bare_relay_server(spin_ms=...)`), in the same processes, harness and
load as the relay benchmark, and Opencode runs beside it. Every server gets the same client
process type, upstream and stream count; the load generators are confined to the last CPU as in
the relay passes. Nothing is written; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/knee.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench.bare_relay import bare_relay_server  # noqa: E402
from bench.common import Worker, median, percentile  # noqa: E402
from bench.opencode_server import opencode_server  # noqa: E402
from bench.relay import RATE, TTFT, relay_client  # noqa: E402
from bench.upstream import upstream_server  # noqa: E402

TOKENS = 50
ROUNDS = 3


def measure(streams: int, spins: list[float], repeat: int, *, tokens: int = TOKENS,
            rounds: int = ROUNDS) -> list[dict[str, Any]]:
    """One row per server and repeat: TTFT p50, token latency p50/p99, loop lag p99, loop busy."""
    upstream = Worker("upstream", upstream_server, ttft=TTFT, rate=RATE, tokens=tokens)
    up_port = upstream.wait_ready(60)["port"]
    servers: dict[str, Worker] = {f"bare + {spin:g} ms": Worker(f"bare-{spin:g}", bare_relay_server,
                                                               up_port=up_port, spin_ms=spin) for spin in spins}
    data = tempfile.TemporaryDirectory()
    servers["opencode"] = Worker("opencode", opencode_server, data_dir=data.name)
    clients: dict[str, Worker] = {}
    rows: list[dict[str, Any]] = []
    try:
        for name, server in servers.items():
            port = server.wait_ready(60)["port"]
            client = clients[name] = Worker(f"client-{name}", relay_client, oc_port=port, up_port=up_port)
            client.wait_ready(60)
            client.call("prepare", streams, tokens, timeout=60 + streams)
            client.call("relay", 1, 2, 60.0, timeout=90)  # warm-up
            client.call("confine", True)
        upstream.call("confine", True)
        for rep in range(repeat):
            for name, client in clients.items():
                servers[name].call("lag_start")
                r = client.call("relay", streams, rounds, 120.0, timeout=300)
                lag = servers[name].call("lag_stop")
                row = {"server": name, "repeat": rep, "ttft_p50": percentile(r["ttft"], 50),
                       "lat_p50": percentile(r["lat"], 50), "lat_p99": percentile(r["lat"], 99),
                       "lag_p99": lag["p99_ms"], "busy": lag["busy"], "errors": r["n_errors"]}
                rows.append(row)
                print(f"  {name:16s} repeat {rep}: TTFT p50 {row['ttft_p50']:.1f} ms, token latency p50/p99 "
                      f"{row['lat_p50']:.2f}/{row['lat_p99']:.2f} ms, loop lag p99 {row['lag_p99']:.1f} ms, "
                      f"loop busy {row['busy']:.0%}", flush=True)
    finally:
        for worker in [*clients.values(), *servers.values(), upstream]:
            worker.close()
        data.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.knee", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--spin", default="0,1.2,2.4", help="ms of CPU a reply for the bare relay, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    spins = [float(s) for s in args.spin.split(",")]
    print(f"knee: {args.streams} streams, {TOKENS} tokens a reply at {RATE:g}/s after {TTFT * 1000:.0f} ms; "
          f"bare relay spins {', '.join(f'{s:g}' for s in spins)} ms a reply; median of {args.repeat}", flush=True)
    rows = measure(args.streams, spins, args.repeat)
    print("\n| server | TTFT p50 | token latency p50 | token latency p99 | loop lag p99 | loop busy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == name]

        def med(key: str) -> float:
            return median([r[key] for r in mine])

        print(f"| {name} | {med('ttft_p50'):.1f} ms | {med('lat_p50'):.2f} ms | {med('lat_p99'):.2f} ms | "
              f"{med('lag_p99'):.1f} ms | {med('busy'):.0%} |")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
