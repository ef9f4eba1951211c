"""`comfy_mount.closed_at_exit`: the service closes even when ComfyUI never runs its app's cleanup.

ComfyUI's `main.py` answers Ctrl-C by leaving `run_until_complete` and exiting, without cleaning up
its aiohttp app. Before the fix the service stayed open and its aiosqlite threads (not daemon
threads) kept the process alive forever. The last test reproduces ComfyUI's main loop in a child
process with the real service and checks that one SIGINT ends it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from opencode_agent.comfy_mount import closed_at_exit

ROOT = Path(__file__).resolve().parent.parent


def recording_context(events: list[str]) -> Callable[[Any], AsyncIterator[None]]:
    async def context(app: Any) -> AsyncIterator[None]:
        events.append("open")
        try:
            yield
        finally:
            await asyncio.sleep(0)
            events.append("close")

    return context


async def test_normal_cleanup_closes_once() -> None:
    events: list[str] = []
    at_exit: list[Callable[[], None]] = []
    app = web.Application()
    app.cleanup_ctx.append(closed_at_exit(recording_context(events), register=at_exit.append))
    runner = web.AppRunner(app)
    await runner.setup()
    assert events == ["open"] and len(at_exit) == 1
    await runner.cleanup()
    assert events == ["open", "close"]
    at_exit[0]()  # the loop is running here, and the context is already finished: nothing happens
    assert events == ["open", "close"]


def test_exit_hook_closes_what_the_app_left_open() -> None:
    events: list[str] = []
    at_exit: list[Callable[[], None]] = []
    app = web.Application()
    app.cleanup_ctx.append(closed_at_exit(recording_context(events), register=at_exit.append))
    loop = asyncio.new_event_loop()
    try:
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        assert events == ["open"]
        # As after ComfyUI's Ctrl-C: the loop stopped and the app's cleanup never ran.
        at_exit[0]()
        assert events == ["open", "close"]
        at_exit[0]()
        assert events == ["open", "close"]
    finally:
        loop.close()


def test_exit_hook_skips_a_closed_loop() -> None:
    events: list[str] = []
    at_exit: list[Callable[[], None]] = []
    app = web.Application()
    app.cleanup_ctx.append(closed_at_exit(recording_context(events), register=at_exit.append))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(web.AppRunner(app).setup())
    loop.close()
    at_exit[0]()  # must not raise at interpreter exit
    assert events == ["open"]


COMFY_LIKE_MAIN = textwrap.dedent("""
    import asyncio, importlib.util, signal, sys
    from pathlib import Path

    root, data = Path(sys.argv[1]), Path(sys.argv[2])
    spec = importlib.util.spec_from_file_location("opencode_agent", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["opencode_agent"] = module
    spec.loader.exec_module(module)

    from aiohttp import web
    from opencode_agent.comfy_mount import closed_at_exit
    from opencode_agent.core.config import Config
    from opencode_agent.routes import register_routes, service_context

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT
    app = web.Application()
    register_routes(app)
    app.cleanup_ctx.append(closed_at_exit(service_context(Config(data_dir=data))))

    async def serve():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("ready", flush=True)
        while True:
            await asyncio.sleep(3600)

    # What ComfyUI's main.py does: run until Ctrl-C, log, exit without cleaning up the app.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        print("Stopped server", flush=True)
""")


def test_one_ctrl_c_ends_a_comfyui_like_process(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(COMFY_LIKE_MAIN)
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            assert time.monotonic() < deadline
        else:
            raise AssertionError("the child never got ready")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)  # before the fix: waited forever on aiosqlite's threads
        assert proc.returncode == 0, out
        assert "Stopped server" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
