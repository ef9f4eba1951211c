"""Inside ComfyUI, an Opencode that cannot start leaves ComfyUI running and says why.

An exception from a `cleanup_ctx` at start-up stops aiohttp's whole app: before the fix, a second
ComfyUI on the same install (one per GPU, same user directory) found Opencode's data directory
locked by the first and did not start at all. Each test mounts the real service the way
`comfy_mount.mount` does, on a real aiohttp server on loopback, with a real cause of failure.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from opencode_agent.comfy_mount import closed_at_exit, survive_start_failure
from opencode_agent.core.config import Config
from opencode_agent.core.errors import OpencodeError
from opencode_agent.routes import mount_lifecycle, register_routes, service_context, service_in


def comfyui_like_app(data_dir: Path) -> web.Application:
    """What `comfy_mount.mount` builds on ComfyUI's app, minus ComfyUI."""
    app = web.Application()
    register_routes(app)
    at_exit: list[Any] = []
    mount_lifecycle(app, survive_start_failure(closed_at_exit(service_context(Config(data_dir=data_dir)),
                                                              register=at_exit.append)))
    return app


@pytest.fixture
def held_elsewhere(tmp_path: Path) -> AsyncIterator[Path]:
    """A data directory whose lock another process holds (as a first ComfyUI would)."""
    data = tmp_path / "opencode"
    data.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        f = open({str(data / "opencode.lock")!r}, "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.truncate(0); f.write(str(os.getpid())); f.flush()
        print("held", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield data
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=10)


@pytest.mark.skipif(sys.platform == "win32", reason="the holder locks with fcntl")
async def test_a_data_directory_held_by_another_comfyui(aiohttp_client: Any, held_elsewhere: Path) -> None:
    client = await aiohttp_client(comfyui_like_app(held_elsewhere))  # started: ComfyUI would be up
    version = await client.get("/opencode/version")
    assert version.status == 200
    for path in ("/opencode/health", "/opencode/sessions", "/opencode/providers"):
        answer = await client.get(path)
        assert answer.status == 503, path
        error = (await answer.json())["error"]
        assert error["code"] == "data_dir_in_use"
        assert error["message"].startswith(f"Opencode did not start in this server: the data directory {held_elsewhere} "
                                           "is in use by another Opencode process (pid ")
        assert error["message"].endswith("each ComfyUI that shares this install needs its own --user-directory, "
                                         "or stop the other one")
    # Through a proxy (a remote client) the reason, and its paths, are for token holders only.
    remote = await client.get("/opencode/sessions", headers={"X-Forwarded-For": "203.0.113.9"})
    assert remote.status == 401 and str(held_elsewhere) not in await remote.text()
    # The node gets the same reason (ComfyUI shows it on the node).
    with pytest.raises(OpencodeError, match="needs its own --user-directory") as raised:
        service_in(client.app)
    assert raised.value.code == "data_dir_in_use"


async def test_a_database_that_is_not_one(aiohttp_client: Any, tmp_path: Path) -> None:
    data = tmp_path / "opencode"
    data.mkdir()
    (data / "opencode.sqlite3").write_bytes(b"this is not a database, it is a text file" * 200)
    client = await aiohttp_client(comfyui_like_app(data))
    answer = await client.get("/opencode/sessions")
    assert answer.status == 503
    error = (await answer.json())["error"]
    assert error["code"] == "database_unreadable"
    assert error["message"] == (f"Opencode did not start in this server: the database {data / 'opencode.sqlite3'} cannot "
                                "be read (file is not a database): it is damaged or not Opencode's; move it aside and "
                                "start again (Opencode makes a new one)")
    # Nothing was left holding the directory: fixed and restarted, it starts.
    (data / "opencode.sqlite3").unlink()
    again = await aiohttp_client(comfyui_like_app(data))
    assert (await again.get("/opencode/sessions")).status == 200


async def test_a_database_from_a_newer_opencode(aiohttp_client: Any, tmp_path: Path) -> None:
    """Going back to an older Opencode (a `git checkout` of an older tag) must not stop ComfyUI."""
    data = tmp_path / "opencode"
    data.mkdir()
    with sqlite3.connect(data / "opencode.sqlite3") as conn:
        conn.execute("PRAGMA user_version = 99")
    client = await aiohttp_client(comfyui_like_app(data))
    error = (await (await client.get("/opencode/sessions")).json())["error"]
    assert error["code"] == "database_too_new"
    assert error["message"] == (f"Opencode did not start in this server: the database {data / 'opencode.sqlite3'} is from "
                                "a newer Opencode (database schema v99 is newer than this Opencode (v5); upgrade Opencode)")


async def test_outside_comfyui_a_failed_start_still_stops_the_server(tmp_path: Path) -> None:
    """`opencode-agent serve` has nothing else to keep running: its start fails loudly."""
    data = tmp_path / "opencode"
    data.mkdir()
    (data / "opencode.sqlite3").write_bytes(b"not a database" * 500)
    app = web.Application()
    register_routes(app)
    mount_lifecycle(app, service_context(Config(data_dir=data)))
    runner = web.AppRunner(app)
    with pytest.raises(Exception, match="not a database"):
        await runner.setup()
    await runner.cleanup()
