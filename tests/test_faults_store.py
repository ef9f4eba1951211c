"""Database trouble: a locked file, a read-only file, a full disk.

For each: the client gets the error envelope `store_unavailable` (HTTP 503, or a WS `error`) with a
message saying what to do; the refused request wrote nothing (no row, no event); streaming runs
still end with a final status; and once the cause goes, the same requests succeed on the same
service. The faults are real where the machine allows (another connection's `BEGIN EXCLUSIVE`;
`chattr +i` on the database files; a full tmpfs) and portable otherwise (the writer connection
reopened read-only, `PRAGMA max_page_count`); each skip says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from helpers_server import StandaloneServer
from opencode_agent.routes import SERVICE
from test_trust import row_counts
from wsclient import WsClient, run_final

BIG_TEXT = "lorem ipsum " * 6000  # ~72 KB: needs new database pages, whatever the free space


async def new_session(client: Any, **body: Any) -> str:
    r = await client.post("/opencode/sessions", json={"skills": ["echo"], **body})
    assert r.status == 201, await r.text()
    return (await r.json())["id"]


async def expect_unavailable(resp: Any, words: str) -> None:
    assert resp.status == 503, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "store_unavailable"
    assert words in err["message"], err["message"]


def integrity(db: Path) -> None:
    """The file is sound and every stored row still parses."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for (data,) in conn.execute("SELECT data FROM events"):
            json.loads(data)
        for (body,) in conn.execute("SELECT body FROM messages"):
            json.loads(body)


async def writer_pragma(service: Any, pragma: str) -> list[Any]:
    """A PRAGMA on the store's writer connection, run on the writer's own thread."""
    return await service.store._on_writer(  # noqa: SLF001
        lambda db: db.execute(f"PRAGMA {pragma}").fetchall())


async def quiet_rows(service: Any) -> dict[str, int]:
    await service.store.flush()
    return row_counts(service.config.db_path)


# --------------------------------------------------------------------------- locked


async def test_locked_database(client: Any, service: Any) -> None:
    # Fail a locked write after 0.2 s instead of the default 2 s, to keep the suite fast.
    await writer_pragma(service, "busy_timeout=200")
    sid = await new_session(client)
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid)
    before = await quiet_rows(service)
    other = sqlite3.connect(service.config.db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        await expect_unavailable(await client.post("/opencode/sessions", json={"title": "blocked"}), "locked")
        await expect_unavailable(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "hi"}), "locked")
        await expect_unavailable(await client.patch(f"/opencode/sessions/{sid}", json={"title": "new"}), "locked")
        reply = await ws.raw(json.dumps({"id": "w1", "type": "send", "session_id": sid, "text": "hello"}))
        assert reply["type"] == "error" and reply["error"]["code"] == "store_unavailable"
        # Reads are not blocked by a writer (WAL).
        r = await client.get(f"/opencode/sessions/{sid}")
        assert r.status == 200 and (await r.json())["title"] != "new"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await quiet_rows(service) == before
    assert [s["title"] for s in (await (await client.get("/opencode/sessions")).json())["sessions"]] != ["blocked"]
    # The cause is gone: the same requests work on the same service.
    assert (await client.post("/opencode/sessions", json={"title": "unblocked"})).status == 201
    sent = await ws.command("send", session_id=sid, text="after the lock")
    final = await ws.until(run_final(sent["data"]["run_id"]))
    assert final["data"]["run"]["status"] == "completed"
    integrity(service.config.db_path)


# --------------------------------------------------------------------------- read-only


@contextlib.asynccontextmanager
async def read_only_writer(service: Any) -> AsyncIterator[None]:
    """The writer connection swapped for one opened read-only: what SQLite does with a file it may
    not write. The real connection comes back on exit. Both live on the writer's thread."""
    store = service.store
    await store.flush()
    real = store._writer_db  # noqa: SLF001
    uri = f"file:{service.config.db_path}?mode=ro"
    ro = await store._on_writer(lambda _: sqlite3.connect(uri, uri=True, isolation_level=None))  # noqa: SLF001
    store._writer_db = ro  # noqa: SLF001
    try:
        yield
    finally:
        store._writer_db = real  # noqa: SLF001
        await store._on_writer_thread(ro.close)  # noqa: SLF001


async def test_read_only_database(client: Any, service: Any) -> None:
    sid = await new_session(client)
    before = await quiet_rows(service)
    async with read_only_writer(service):
        await expect_unavailable(await client.post("/opencode/sessions", json={}), "read-only")
        await expect_unavailable(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "x"}),
                                 "read-only")
        await expect_unavailable(await client.patch(f"/opencode/sessions/{sid}", json={"title": "t"}), "read-only")
    assert await quiet_rows(service) == before
    r = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "writable again"},
                          headers={"Accept": "text/event-stream"})
    assert '"status":"completed"' in await r.text()
    assert (await quiet_rows(service))["messages"] == before["messages"] + 2


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def chattr_works() -> str | None:
    """None if `chattr +i` can make a file here immutable, else why not."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe"
        probe.write_text("x")
        try:
            _chattr("+i", probe)
        except subprocess.CalledProcessError as exc:
            return f"chattr +i is not permitted here: {exc.stderr.decode().strip()}"
        _chattr("-i", probe)
    return None


async def test_database_file_made_immutable_while_running(client: Any, service: Any) -> None:
    """The real thing: the files turn unwritable under a running service (root ignores modes, not
    `chattr +i`). The shared-memory index stays writable: an immutable mmap'd file is a SIGBUS."""
    reason = chattr_works()
    if reason:
        pytest.skip(reason)
    sid = await new_session(client)
    before = await quiet_rows(service)
    db = service.config.db_path
    files = [db, db.with_name(db.name + "-wal")]
    _chattr("+i", *files)
    try:
        r = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": "nope"})
        assert r.status == 503 and (await r.json())["error"]["code"] == "store_unavailable"
        assert (await client.post("/opencode/sessions", json={})).status == 503
    finally:
        _chattr("-i", *files)
    assert await quiet_rows(service) == before
    assert (await client.post("/opencode/sessions", json={})).status == 201
    integrity(db)


# --------------------------------------------------------------------------- disk full


async def test_database_full(client: Any, service: Any) -> None:
    """`max_page_count` caps the file where it is: the next write that needs a page fails as
    SQLITE_FULL, exactly as on a full disk."""
    sid = await new_session(client)
    await service.store.flush()
    [(pages,)] = await writer_pragma(service, "page_count")
    before = row_counts(service.config.db_path)
    await writer_pragma(service, f"max_page_count={pages}")
    try:
        await expect_unavailable(await client.post(f"/opencode/sessions/{sid}/messages", json={"text": BIG_TEXT}),
                                 "full")
    finally:
        await writer_pragma(service, "max_page_count=1073741823")
    assert await quiet_rows(service) == before
    r = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": BIG_TEXT[:2000]},
                          headers={"Accept": "text/event-stream"})
    assert '"status":"completed"' in await r.text()
    integrity(service.config.db_path)


async def test_disk_fills_up_mid_stream(aiohttp_client: Any, make_app: Any, config: Any) -> None:
    """Checkpoints fail while a reply streams: the run still ends with a final status, the failed
    batches are rolled back whole, and the service carries on once there is room again."""
    config.echo_delay = 0.01
    config.checkpoint_interval = 0.01
    client = await aiohttp_client(make_app())
    service = client.app[SERVICE]
    sid = await new_session(client)
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid)
    await service.store.flush()
    [(pages,)] = await writer_pragma(service, "page_count")
    sent = await ws.command("send", session_id=sid, text=" ".join(f"w{i}" for i in range(60)))
    await ws.until(lambda e: e["type"] == "message.delta")
    await writer_pragma(service, f"max_page_count={pages}")
    failed_before = service.store.failed_batches
    try:
        final = await ws.until(run_final(sent["data"]["run_id"]))
        assert final["data"]["run"]["status"] == "completed"  # the person saw the whole reply
        await service.store.flush()
    finally:
        await writer_pragma(service, "max_page_count=1073741823")
    integrity(service.config.db_path)
    assert service.store.failed_batches > failed_before
    # The events of the failed batches are tried again once there is room: no gap in the log.
    for _ in range(200):
        last = service.bus.last_seq(sid)
        stored = [e.seq for e in await service.store.events_after(sid, 0, 100_000)]
        if stored and stored[-1] == last:
            break
        await asyncio.sleep(0.05)
    assert stored == list(range(1, last + 1)) and service.store.lost_rows == 0
    page = await (await client.get(f"/opencode/sessions/{sid}/messages")).json()
    assert [m["status"] for m in page["messages"]] == ["completed"] * 2
    again = await ws.command("send", session_id=sid, text="room again")
    assert (await ws.until(run_final(again["data"]["run_id"])))["data"]["run"]["status"] == "completed"
    runs = [e["data"]["run"] for e in ws.of_type("run.status")]
    assert not [r for r in runs if r["status"] == "working" and not any(
        x["id"] == r["id"] and x["status"] != "working" for x in runs)]


# --------------------------------------------------------------------------- a real full disk


def _mount_tmpfs(path: Path, size: str) -> str | None:
    if os.name != "posix" or shutil.which("mount") is None:
        return "mount is not available"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return None if r.returncode == 0 else f"cannot mount a tmpfs here: {r.stderr.decode().strip()}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    reason = _mount_tmpfs(mnt, "8m")
    if reason:
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path) -> Path:
    """Write a file until the disk says ENOSPC."""
    filler = disk / "filler"
    block = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    return filler


def _call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_real_full_disk_standalone_server(small_disk: Path, tmp_path: Path) -> None:
    """A standalone server whose data dir is on an 8 MB tmpfs that fills up."""
    with StandaloneServer(small_disk / "data", log_path=tmp_path / "server.log",
                          config={"echo_delay": 0.001}) as server:
        status, session = _call(server.url + "/opencode/sessions", "POST", {"skills": ["echo"]})
        assert status == 201
        sid = session["id"]
        filler = _fill(small_disk)
        try:
            status, body = _call(f"{server.url}/opencode/sessions/{sid}/messages", "POST", {"text": BIG_TEXT})
            assert status == 503, body
            assert body["error"]["code"] == "store_unavailable" and "full" in body["error"]["message"]
            status, health = _call(server.url + "/opencode/health")
            assert status == 200 and health["status"] == "degraded" and "full" in health["store_error"]
            status, _ = _call(server.url + "/opencode/sessions", "POST", {"title": "x" * 200})
            assert status in (201, 503)  # a tiny row may still fit in the WAL's last page
            assert server.alive
            status, page = _call(f"{server.url}/opencode/sessions/{sid}/messages")
            assert status == 200 and page["messages"] == []
        finally:
            filler.unlink()
        status, _ = _call(f"{server.url}/opencode/sessions/{sid}/messages", "POST", {"text": BIG_TEXT})
        assert status == 202
        assert server.alive
        status, health = _call(server.url + "/opencode/health")
        assert status == 200 and health["status"] == "ok" and health["store_error"] is None
    integrity(small_disk / "data" / "opencode.sqlite3")
