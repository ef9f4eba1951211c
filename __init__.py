"""Opencode: a persistent AI agent inside ComfyUI (node, panel, /opencode routes).

ComfyUI imports this folder by its path. Without ComfyUI (tests, the standalone server) the
ComfyUI-only parts are skipped, so the package still imports.
"""

from __future__ import annotations

import logging

from .version import __version__

log = logging.getLogger("opencode")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
WEB_DIRECTORY = "./web/dist"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
