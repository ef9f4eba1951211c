"""Mounting Opencode inside a running ComfyUI (imported only when ComfyUI is there).

Registers the routes on `PromptServer.instance.routes` (ComfyUI mirrors them under `/api`),
opens the service in a `cleanup_ctx` of ComfyUI's app, keeps the data in
`<ComfyUI user dir>/opencode/`, and gives the node its bridge to the server loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import secrets
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .core.config import Config
from .core.errors import OpencodeError
from .core.trust import TrustPolicy
from .node import NodeBridge, OpencodeAgent
from .routes import START_FAILURE, TRUST, mount_lifecycle, register_routes, service_context, service_in
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
    context = service_context(config, wiring.skill_factories(), wiring.image_loader())
    mount_lifecycle(server.app, survive_start_failure(closed_at_exit(context)))
    OpencodeAgent.bridge = NodeBridge(loop=server.loop, service=lambda: service_in(server.app),
                                      check_interrupt=check_interrupt)
    log.info("Opencode %s mounted under /opencode (data in %s)", _version(), config.data_dir)


CLOSE_AT_EXIT_TIMEOUT = 10.0

Context = Callable[[Any], AsyncIterator[None]]


def survive_start_failure(context: Context) -> Context:
    """Wrap a `cleanup_ctx` entry so that a service that cannot start leaves ComfyUI running.

    Why: an exception from a `cleanup_ctx` at start-up stops ComfyUI's server, so an Opencode
    that could not open its data (a second ComfyUI on the same user directory, one GPU each,
    finds it locked by the first; a corrupt or newer database; a full disk) took the whole of
    ComfyUI down with it. Now the failure is logged once, with what to do, and kept on the app:
    `/opencode/*` answers 503 with it, the node raises it, and the rest of ComfyUI works.
    """

    async def guarded(app: Any) -> AsyncIterator[None]:
        inner = context(app)
        try:
            await inner.__anext__()
        except Exception as exc:  # noqa: BLE001 - whatever it is, ComfyUI must go on
            failure = _with_hint(exc if isinstance(exc, OpencodeError) else OpencodeError(
                f"{type(exc).__name__}: {exc}", code="start_failed"))
            app[START_FAILURE] = failure
            # A token nobody has: a remote client is refused (401) before it learns local paths.
            app[TRUST] = TrustPolicy(token=secrets.token_urlsafe(32))
            log.error("Opencode is off in this ComfyUI: %s (the rest of ComfyUI runs; fix the cause and "
                      "restart ComfyUI)", failure.message)
            yield
            return
        try:
            yield
        finally:
            await inner.aclose()

    return guarded


# What a person does about a failure that is ComfyUI's to fix (the core does not know its host).
_HINTS = {
    "data_dir_in_use": "each ComfyUI that shares this install needs its own --user-directory, or stop the other one",
}


def _with_hint(failure: OpencodeError) -> OpencodeError:
    hint = _HINTS.get(failure.code)
    if hint is None:
        return failure
    return OpencodeError(f"{failure.message}: {hint}", code=failure.code, status=failure.status,
                         details=failure.details)


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
