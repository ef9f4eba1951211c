"""How Opencode is put together for each host: inside ComfyUI, or standalone.

Inside ComfyUI the ComfyUI tools talk to the running server in-process; standalone they talk to
a ComfyUI URL over HTTP (or are left out). This is the one place that picks the adapter, so
`core/` never imports ComfyUI and `skills/` never imports the routes.
"""

from __future__ import annotations

from typing import Any

from .core.config import Config
from .core.errors import NotFound
from .core.images import ImageLoader
from .core.service import OpencodeService, SkillFactory
from .skills.comfyui import build_comfyui_skill
from .skills.comfyui.http_adapter import HttpComfyAdapter
from .skills.comfyui.inprocess_adapter import InProcessComfyAdapter


class HostWiring:
    """Skill factories and the image loader for one host; the adapter is made when the service starts."""

    def __init__(self, config: Config, make_adapter: Any | None) -> None:
        self.config = config
        self.make_adapter = make_adapter
        self.adapter: Any = None

    def skill_factories(self) -> list[SkillFactory]:
        if self.make_adapter is None:
            return []

        def comfyui_skill(service: OpencodeService) -> Any:
            self.adapter = self.make_adapter(service)
            service.close_hooks.append(self.adapter.close)
            return build_comfyui_skill(self.adapter)

        return [comfyui_skill]

    def image_loader(self) -> ImageLoader:
        async def comfy_reader(part: Any) -> tuple[bytes, str]:
            if self.adapter is None:
                raise NotFound("ComfyUI is not connected yet", code="image_unavailable")
            return await self.adapter.load_image(part)

        return ImageLoader(self.config.data_dir, comfy_reader if self.make_adapter else None)


def standalone(config: Config) -> HostWiring:
    """Standalone: ComfyUI tools over HTTP when a ComfyUI URL is configured."""
    url = config.comfyui_url
    make = (lambda svc: HttpComfyAdapter(url, svc.http)) if url else None
    return HostWiring(config, make)


def inside_comfyui(config: Config, server: Any) -> HostWiring:
    return HostWiring(config, lambda svc: InProcessComfyAdapter(server))
