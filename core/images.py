"""Images the user attached (node input, panel upload): saved under `<data dir>/uploads/`.

A part with `source="upload"` is read back from there for vision requests; `source="comfyui"`
images are read through whatever ComfyUI adapter the host wired in. File I/O runs off the loop.
`fit_for_model` keeps an image within what the providers accept. Imports protocol, tools (its
error type) and errors; Pillow only when an image needs fitting (ComfyUI ships it; without it,
images go out as they are).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable, Callable

from .errors import BadRequest, NotFound
from .protocol import ImagePart
from .tools import ToolError

log = logging.getLogger("opencode.images")

ComfyImageReader = Callable[[ImagePart], Awaitable[tuple[bytes, str]]]

# What every provider takes. Anthropic documents 5 MB an image, counted on its base64 text (so
# 3.75 MB of bytes), and 8000 px a side (2000 px in a request of more than 20 images); it scales a
# side over 1568 px down itself, as OpenAI's "high" detail fits 2048 px and then 768 px on the
# short side: sending more pixels than 1568 costs bytes and upload time, not detail.
MODEL_IMAGE_SIDE = 1568
MODEL_IMAGE_BYTES = 3_750_000
JPEG_QUALITIES = (90, 80, 65)
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def save_upload(data_dir: Path, data: bytes, mime: str = "image/png") -> ImagePart:
    """Store image bytes by content hash (idempotent) and return their reference. Blocking: call off-loop."""
    name = hashlib.sha256(data).hexdigest()[:32] + _EXTENSIONS.get(mime, ".png")
    folder = data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return ImagePart(source="upload", filename=name, folder_type="input", mime_type=mime)


def encode_for_model(image: Any) -> tuple[bytes, str]:
    """A Pillow image as (bytes, mime type) within `MODEL_IMAGE_SIDE` and `MODEL_IMAGE_BYTES`.

    PNG first (lossless, keeps transparency); a photo or noise too big as PNG goes as JPEG, at a
    lower quality, then smaller, until it fits. Blocking: call off-loop."""
    image = _scaled(image, MODEL_IMAGE_SIDE)
    while True:
        png = _encoded(image, "PNG")
        if len(png) <= MODEL_IMAGE_BYTES:
            return png, "image/png"
        rgb = image.convert("RGB")
        for quality in JPEG_QUALITIES:
            jpeg = _encoded(rgb, "JPEG", quality=quality)
            if len(jpeg) <= MODEL_IMAGE_BYTES:
                return jpeg, "image/jpeg"
        image = _scaled(image, max(1, int(max(image.size) * 0.75)))


def fit_for_model(data: bytes, mime: str) -> tuple[bytes, str]:
    """The image as a provider takes it: unchanged when it fits, else scaled down and re-encoded
    (`encode_for_model`). Unchanged too without Pillow, or when Pillow cannot read it (the
    provider then says what is wrong). Blocking: call off-loop."""
    try:
        from PIL import Image
    except ImportError:
        return data, mime
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if max(image.size) <= MODEL_IMAGE_SIDE and len(data) <= MODEL_IMAGE_BYTES:
                return data, mime
            image.load()
            size = image.size
            fitted, fitted_mime = encode_for_model(image)
    except Exception as exc:  # noqa: BLE001 - not an image Pillow reads, or too large to decode
        log.warning("image of %d bytes left as it is: %s", len(data), exc)
        return data, mime
    log.info("image %dx%d (%d bytes) sent as %s of %d bytes", size[0], size[1], len(data), fitted_mime, len(fitted))
    return fitted, fitted_mime


class FittedImages:
    """`fit_for_model` off the loop, remembering the last few results: an image stays in a
    conversation, so every later request of it would decode and encode it again."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._done: OrderedDict[bytes, tuple[bytes, str]] = OrderedDict()

    async def __call__(self, data: bytes, mime: str) -> tuple[bytes, str]:
        # Hashed off the loop too: 32 MB take about 27 ms, and every request resends its images.
        key = await asyncio.to_thread(_digest, data, mime)
        done = self._done.get(key)
        if done is None:
            done = self._done[key] = await asyncio.to_thread(fit_for_model, data, mime)
            while len(self._done) > self.size:
                self._done.popitem(last=False)
        self._done.move_to_end(key)
        return done


def _digest(data: bytes, mime: str) -> bytes:
    return hashlib.sha256(data).digest() + mime.encode()


# The one the providers use (core/providers/http.py).
fitted = FittedImages()


def _scaled(image: Any, side: int) -> Any:
    if max(image.size) <= side:
        return image
    from PIL import Image

    scale = side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, getattr(Image, "Resampling", Image).LANCZOS)


def _encoded(image: Any, fmt: str, **options: Any) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1") or (fmt == "JPEG" and image.mode != "RGB"):
        image = image.convert("RGBA" if fmt == "PNG" and "A" in image.mode else "RGB")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


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
        # By its name: a request for the file (`GET /opencode/files`) does not say what it holds.
        mime = next((m for m, ext in _EXTENSIONS.items() if target.suffix == ext), part.mime_type)
        try:
            return await asyncio.to_thread(target.read_bytes), mime
        except FileNotFoundError:
            raise NotFound(f"the uploaded image {part.filename} is gone") from None
