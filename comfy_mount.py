"""Mounting Opencode inside a running ComfyUI (imported only when ComfyUI is there).

Registers the routes on `PromptServer.instance.routes` (ComfyUI mirrors them under `/api`),
opens the service in a `cleanup_ctx` of ComfyUI's app, keeps the data in
`<ComfyUI user dir>/opencode/`, and gives the node its bridge to the server loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .core.config import Config
from .node import NodeBridge, OpencodeAgent
from .routes import SERVICE, register_routes, service_context
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
    server.app.cleanup_ctx.append(service_context(config, wiring.skill_factories(), wiring.image_loader()))
    OpencodeAgent.bridge = NodeBridge(loop=server.loop, service=lambda: server.app[SERVICE],
                                      check_interrupt=check_interrupt)
    log.info("Opencode %s mounted under /opencode (data in %s)", _version(), config.data_dir)


def _version() -> str:
    from .version import __version__

    return __version__
