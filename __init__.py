"""Opencode: a persistent AI agent inside ComfyUI (node, panel, /opencode routes).

ComfyUI imports this folder by its path and reads `NODE_CLASS_MAPPINGS` and `WEB_DIRECTORY`.
Routes must exist before ComfyUI copies its route table, so they are registered here, at import
time, and the service opens in a `cleanup_ctx` of ComfyUI's app. Without ComfyUI (tests, the
standalone server) the ComfyUI part is skipped and the package still imports.
"""

from __future__ import annotations

import logging

from .node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .version import __version__

log = logging.getLogger("opencode")

WEB_DIRECTORY = "./web/dist"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]


def _prompt_server() -> object | None:
    try:
        from server import PromptServer  # ComfyUI's own module, present only inside ComfyUI
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


_server = _prompt_server()
if _server is not None:
    from .comfy_mount import mount

    mount(_server)
