"""Mounting Opencode inside a running ComfyUI (imported only when ComfyUI is there).

Registers the routes on `PromptServer.instance.routes` (ComfyUI mirrors them under `/api`),
opens the service in a `cleanup_ctx` of ComfyUI's app, keeps the data in
`<ComfyUI user dir>/opencode/`, and gives the node its bridge to the server loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .core.config import Config
from .node import NodeBridge, OpencodeAgent
from .routes import SERVICE, mount_lifecycle, register_routes, service_context
from .wiring import inside_comfyui

log = logging.getLogger("opencode.mount")


def comfyui_data_dir() -> Path:
    import folder_paths  # ComfyUI

    return Path(folder_paths.get_user_directory()) / "opencode"


def check_interrupt() -> None:
    import comfy.model_management  # ComfyUI

    comfy.model_management.throw_exception_if_processing_interrupted()


def mount(server: Any) -> None:
    config = Config(data_dir=comfyui_data_dir())
    wiring = inside_comfyui(config, server)
    register_routes(server.routes)
    mount_lifecycle(server.app, closed_at_exit(service_context(config, wiring.skill_factories(), wiring.image_loader())))
    OpencodeAgent.bridge = NodeBridge(loop=server.loop, service=lambda: server.app[SERVICE],
                                      check_interrupt=check_interrupt)
    log.info("Opencode %s mounted under /opencode (data in %s)", _version(), config.data_dir)


CLOSE_AT_EXIT_TIMEOUT = 10.0

Context = Callable[[Any], AsyncIterator[None]]


def closed_at_exit(context: Context, register: Callable[[Callable[[], None]], None] | None = None) -> Context:
    """Wrap a `cleanup_ctx` entry so that it is also finished when the process exits.

    On Ctrl-C, ComfyUI's `main.py` just leaves `run_until_complete`: its app's cleanup never runs,
    so the service was never closed, and the aiosqlite worker threads (not daemon threads) kept
    Python waiting for them forever: ComfyUI hung after "Stopped server" until a second Ctrl-C.
    So the service is also closed, on ComfyUI's now idle loop, just before Python joins threads.
    """
    register = register or _before_thread_join

    async def guarded(app: Any) -> AsyncIterator[None]:
        inner = context(app)
        await inner.__anext__()  # the service started
        loop = asyncio.get_running_loop()
        left = [inner]

        def finish() -> None:
            if not left or loop.is_closed() or loop.is_running():
                return
            try:
                loop.run_until_complete(asyncio.wait_for(left.pop().aclose(), CLOSE_AT_EXIT_TIMEOUT))
                log.info("Opencode closed at exit")
            except BaseException:  # noqa: BLE001 - the process is exiting anyway
                log.exception("Opencode could not close at exit")

        register(finish)
        try:
            yield
        finally:
            if left:
                await left.pop().aclose()

    return guarded


def _before_thread_join(fn: Callable[[], None]) -> None:
    """Run `fn` at exit before Python joins the non-daemon threads (`atexit` runs only after)."""
    register = getattr(threading, "_register_atexit", None)  # CPython 3.9+
    try:
        if register is not None:
            register(fn)
            return
    except RuntimeError:  # already shutting down
        return
    atexit.register(fn)


def _version() -> str:
    from .version import __version__

    return __version__
