"""Images the user attached (node input, panel upload): saved under `<data dir>/uploads/`.

A part with `source="upload"` is read back from there for vision requests; `source="comfyui"`
images are read through whatever ComfyUI adapter the host wired in. File I/O runs off the loop.
Imports protocol, tools (its error type) and errors.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Awaitable, Callable

from .errors import BadRequest, NotFound
from .protocol import ImagePart
from .tools import ToolError

ComfyImageReader = Callable[[ImagePart], Awaitable[tuple[bytes, str]]]


def save_upload(data_dir: Path, png: bytes) -> ImagePart:
    """Store PNG bytes by content hash (idempotent) and return their reference. Blocking: call off-loop."""
    name = hashlib.sha256(png).hexdigest()[:32] + ".png"
    folder = data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(png)
        tmp.replace(target)
    return ImagePart(source="upload", filename=name, folder_type="input", mime_type="image/png")


class ImageLoader:
    def __init__(self, data_dir: Path, comfy: ComfyImageReader | None = None) -> None:
        self.uploads = (data_dir / "uploads").resolve()
        self.comfy = comfy

    async def __call__(self, part: ImagePart) -> tuple[bytes, str]:
        if "\x00" in part.filename or "\x00" in part.subfolder:  # no path holds one; the OS refuses it
            raise BadRequest("invalid image file name", code="validation_error")
        if part.source == "comfyui":
            if self.comfy is None:
                raise BadRequest("this Opencode is not connected to ComfyUI, so ComfyUI images can't be read",
                                 code="image_unavailable")
            try:
                return await self.comfy(part)
            except ToolError as exc:
                raise NotFound(str(exc), code="image_unavailable") from None
        target = (self.uploads / part.filename).resolve()
        if target.parent != self.uploads:
            raise BadRequest("invalid image file name", code="validation_error")
        try:
            return await asyncio.to_thread(target.read_bytes), part.mime_type
        except FileNotFoundError:
            raise NotFound(f"the uploaded image {part.filename} is gone") from None
