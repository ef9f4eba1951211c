"""Benchmarks 3 and 4: `SqliteStore` writes (group commit) and the last page of a long session.

3. Message rows through `SqliteStore.queue_message` + `flush`, on a WAL file with the service's
   defaults (≤ 100 rows or ≤ 50 ms a transaction). Two measurements, each against raw batched
   aiosqlite inserts of the same rows (pre-serialised, 100 a transaction, same pragmas):
   - throughput: queue every row as fast as the loop allows (yielding once per 100), then flush;
   - loop lag at the target rate: 20k rows/s offered in steps of 100 every 5 ms while the 1 ms
     ticker runs; the baseline offers the same rows the same way.
4. `SqliteStore.get_messages(session, limit=50)` on a session of 100k messages (plus 20k of other
   sessions interleaved), against the raw indexed query it runs (`WHERE session_id=? ORDER BY
   rowid DESC LIMIT 51`) in one aiosqlite round trip (`execute_fetchall`), rows left as tuples.
   Calls alternate store / raw.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import LagTicker, Row, median, percentile

BATCH = 100
TEXT = ("Connect the VAE Decode output to Save Image, then queue the workflow again; the sampler "
        "settings stay as they are. If the image is still grey, lower the CFG to about 6 and retry. ") * 2


def _messages(n: int, sessions: list[str], prefix: str) -> list[Any]:
    from opencode_agent.core.protocol import Message, TextPart

    t = time.time()
    return [
        Message(id=f"msg_{prefix}{i:09d}", session_id=sessions[i % len(sessions)],
                role="user" if i % 2 == 0 else "assistant", skill=None if i % 2 == 0 else "assistant",
                parts=[TextPart(text=f"{i} {TEXT}")], status="completed", created_at=t, updated_at=t)
        for i in range(n)
    ]


async def _raw_connect(path: Path) -> Any:
    import aiosqlite

    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=2000", "foreign_keys=ON"):
        await db.execute(f"PRAGMA {pragma}")
    return db


def _fresh_db(path: Path) -> None:
    """The real schema, via the store's migrations, on a new file."""
    from opencode_agent.core.migrations import migrate

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db)
    finally:
        db.close()


# --------------------------------------------------------------------------- 3: writes


async def _store_throughput(path: Path, messages: list[Any]) -> dict[str, float]:
    from opencode_agent.core.store import SqliteStore

    store = SqliteStore(path)
    await store.open()
    ticker = LagTicker()
    try:
        ticker.start()
        t0 = time.perf_counter()
        for i in range(0, len(messages), BATCH):
            for m in messages[i:i + BATCH]:
                store.queue_message(m)
            await asyncio.sleep(0)
        await store.flush()
        elapsed = time.perf_counter() - t0
        await ticker.stop()
        if store.failed_batches:
            raise RuntimeError(f"{store.failed_batches} batches failed")
    finally:
        await store.close()
    return {"rate": len(messages) / elapsed, "lag_p99": ticker.summary()["p99_ms"]}


async def _raw_throughput(path: Path, rows: list[tuple[Any, ...]], sql: str) -> dict[str, float]:
    db = await _raw_connect(path)
    ticker = LagTicker()
    try:
        ticker.start()
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(sql, rows[i:i + BATCH])
            await db.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        await ticker.stop()
    finally:
        await db.close()
    return {"rate": len(rows) / elapsed, "lag_p99": ticker.summary()["p99_ms"]}


async def _paced(offer: Any, n: int, rate: float) -> dict[str, float]:
    """Call `offer(i, j)` for rows [i, j) every BATCH/rate seconds (absolute schedule); lag meanwhile."""
    step = BATCH / rate
    ticker = LagTicker()
    ticker.start()
    t0 = time.perf_counter()
    late = 0
    for k, i in enumerate(range(0, n, BATCH)):
        wait = t0 + k * step - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late += 1
        await offer(i, min(n, i + BATCH))
    offered = time.perf_counter() - t0
    await ticker.stop()
    summary = ticker.summary()
    return {"lag_p99": summary["p99_ms"], "lag_p50": summary["p50_ms"], "starved": summary["starved"],
            "achieved": n / offered, "late_steps": late}


async def _store_paced(path: Path, messages: list[Any], rate: float) -> dict[str, float]:
    from opencode_agent.core.store import SqliteStore

    store = SqliteStore(path)
    await store.open()
    try:
        async def offer(i: int, j: int) -> None:
            for m in messages[i:j]:
                store.queue_message(m)

        res = await _paced(offer, len(messages), rate)
        t = time.perf_counter()
        await store.flush()
        res["flush_ms"] = (time.perf_counter() - t) * 1000
    finally:
        await store.close()
    return res


async def _raw_paced(path: Path, rows: list[tuple[Any, ...]], sql: str, rate: float) -> dict[str, float]:
    db = await _raw_connect(path)
    try:
        async def offer(i: int, j: int) -> None:
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(sql, rows[i:j])
            await db.execute("COMMIT")

        return await _paced(offer, len(rows), rate)
    finally:
        await db.close()


async def _writes_once(n: int, paced_n: int, rate: float, log: Any) -> dict[str, float]:
    from opencode_agent.core.store import _UPSERT_MESSAGE, _message_row

    sessions = [f"ses_bench{i:02d}" for i in range(10)]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="opencode-bench-store-") as tmp:
        for name in ("store", "raw", "store_paced", "raw_paced"):
            _fresh_db(Path(tmp) / f"{name}.sqlite3")
        msgs = _messages(n, sessions, "t")
        rows = [_message_row(m) for m in msgs]
        paced = _messages(paced_n, sessions, "p")
        paced_rows = [_message_row(m) for m in paced]
        raw = await _raw_throughput(Path(tmp) / "raw.sqlite3", rows, _UPSERT_MESSAGE)
        store = await _store_throughput(Path(tmp) / "store.sqlite3", msgs)
        raw_p = await _raw_paced(Path(tmp) / "raw_paced.sqlite3", paced_rows, _UPSERT_MESSAGE, rate)
        store_p = await _store_paced(Path(tmp) / "store_paced.sqlite3", paced, rate)
        for name in ("store", "store_paced"):
            db = sqlite3.connect(Path(tmp) / f"{name}.sqlite3")
            count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            db.close()
            if count != (n if name == "store" else paced_n):
                raise RuntimeError(f"{name}: {count} rows stored")
    log(f"    writes: store {store['rate']:,.0f} rows/s vs raw {raw['rate']:,.0f} rows/s (lag p99 during "
        f"burst {store['lag_p99']:.2f} / {raw['lag_p99']:.2f} ms); at {rate:,.0f} rows/s lag p99 "
        f"{store_p['lag_p99']:.2f} ms vs raw {raw_p['lag_p99']:.2f} ms (achieved {store_p['achieved']:,.0f}/s, "
        f"final flush {store_p['flush_ms']:.0f} ms; loop thread starved {store_p['starved']:.0%})")
    out.update(store_rate=store["rate"], raw_rate=raw["rate"], store_lag=store_p["lag_p99"],
               raw_lag=raw_p["lag_p99"], achieved=store_p["achieved"], burst_lag=store["lag_p99"],
               store_starved=store_p["starved"],
               raw_burst_lag=raw["lag_p99"])
    return out


# --------------------------------------------------------------------------- 4: last page


async def _last_page_once(total: int, noise: int, calls: int, log: Any) -> dict[str, float]:
    from opencode_agent.core.store import _MESSAGE_COLUMNS, _UPSERT_MESSAGE, SqliteStore, _message_row

    target = "ses_bench_long"
    with tempfile.TemporaryDirectory(prefix="opencode-bench-page-") as tmp:
        path = Path(tmp) / "opencode.sqlite3"
        _fresh_db(path)
        t = time.perf_counter()
        # Interleaved: every sixth message belongs to another session.
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        chunk = 10_000
        made = 0
        while made < total + noise:
            k = min(chunk, total + noise - made)
            msgs = _messages(k, [target] * 5 + ["ses_bench_other"], f"h{made:09d}_")
            db.executemany(_UPSERT_MESSAGE, [_message_row(m) for m in msgs])
            made += k
        db.execute("COMMIT")
        in_target = db.execute("SELECT COUNT(*) FROM messages WHERE session_id=?", (target,)).fetchone()[0]
        db.close()
        log(f"    last page: {in_target:,} messages in the session, {made - in_target:,} in another "
            f"(built in {time.perf_counter() - t:.1f}s)")

        store = SqliteStore(path)
        await store.open()
        raw = await _raw_connect(path)
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id=? ORDER BY rowid DESC LIMIT ?"
        try:
            store_ms: list[float] = []
            raw_ms: list[float] = []
            clock = time.perf_counter
            for i in range(calls + 20):
                t0 = clock()
                page, more = await store.get_messages(target, limit=50)
                t1 = clock()
                rows = list(await raw.execute_fetchall(sql, (target, 51)))
                t2 = clock()
                if len(page) != 50 or not more or len(rows) != 51:
                    raise RuntimeError("wrong page size")
                if i >= 20:  # the first calls warm the page cache
                    store_ms.append((t1 - t0) * 1000)
                    raw_ms.append((t2 - t1) * 1000)
        finally:
            await raw.close()
            await store.close()
    return {"store_p50": percentile(store_ms, 50), "store_p99": percentile(store_ms, 99),
            "raw_p50": percentile(raw_ms, 50), "raw_p99": percentile(raw_ms, 99)}


# --------------------------------------------------------------------------- entry points


def run_writes(quick: bool, repeat: int, log: Any = print) -> list[Row]:
    from .common import load_opencode

    load_opencode()
    n = 10_000 if quick else 100_000
    rate = 20_000.0
    paced_n = int(rate * (1 if quick else 4))
    log(f"  persistence: {n:,} message rows as fast as possible; {paced_n:,} rows offered at {rate:,.0f}/s")
    res = [asyncio.run(_writes_once(n, paced_n, rate, log)) for _ in range(repeat)]
    col = lambda k: [r[k] for r in res]  # noqa: E731
    s_rate, r_rate = median(col("store_rate")), median(col("raw_rate"))
    s_lag, r_lag = median(col("store_lag")), median(col("raw_lag"))
    return [
        Row("3 persistence", "message rows/s, SqliteStore group commit", "/s", s_rate, r_rate, "≥ 20,000/s",
            s_rate >= 20_000, col("store_rate"), col("raw_rate")),
        Row("3 persistence", f"loop lag p99 at {rate:,.0f} rows/s", "ms", s_lag, r_lag, "≤ 2 ms", s_lag <= 2.0,
            col("store_lag"), col("raw_lag"),
            note=f"loop thread starved {median(col('store_starved')):.0%} of the time"),
    ]


def run_last_page(quick: bool, repeat: int, log: Any = print) -> list[Row]:
    from .common import load_opencode

    load_opencode()
    total = 10_000 if quick else 100_000
    calls = 200 if quick else 1000
    res = [asyncio.run(_last_page_once(total, total // 5, calls, log)) for _ in range(repeat)]
    s50, r50 = median([r["store_p50"] for r in res]), median([r["raw_p50"] for r in res])
    s99, r99 = median([r["store_p99"] for r in res]), median([r["raw_p99"] for r in res])
    label = f"{total // 1000}k-message session"
    return [
        Row("4 last page", f"get_messages(limit=50) p50, {label}", "ms", s50, r50, "≤ 1 ms", s50 <= 1.0,
            [r["store_p50"] for r in res], [r["raw_p50"] for r in res]),
        Row("4 last page", f"get_messages(limit=50) p99, {label}", "ms", s99, r99, "info", None,
            [r["store_p99"] for r in res], [r["raw_p99"] for r in res]),
    ]
