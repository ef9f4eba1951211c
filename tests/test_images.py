"""Images reach a provider within what it accepts: Anthropic documents 5 MB an image (counted on
its base64 text) and 8000 px a side, and scales anything over 1568 px down itself.

The reviewer's case: a 2048x2048 noisy image from the node went out as a 10,161,770-character
data URL (a 7.6 MB PNG); a run's output read by `view_image` may be 32 MB.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import aiohttp
import pytest

from opencode_agent.core.images import MODEL_IMAGE_BYTES, MODEL_IMAGE_SIDE, FittedImages, fit_for_model
from opencode_agent.core.protocol import ImagePart, ProviderProfile
from opencode_agent.core.providers.openai import OpenAIProvider

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")


def png(width: int, height: int, *, noise: bool = False, mode: str = "RGB") -> bytes:
    channels = len(mode)
    shape = (height, width, channels)
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8) if noise else np.full(shape, 90, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def opened(data: bytes) -> Any:
    return Image.open(io.BytesIO(data))


def test_an_image_within_the_limits_goes_as_it_is() -> None:
    small = png(640, 480)
    assert fit_for_model(small, "image/png") == (small, "image/png")


def test_a_big_noisy_image_is_scaled_and_compressed_under_the_byte_limit() -> None:
    big = png(2048, 2048, noise=True)
    assert len(big) > 2 * MODEL_IMAGE_BYTES  # the reviewer's image: about 12.6 MB as PNG
    data, mime = fit_for_model(big, "image/png")
    assert mime == "image/jpeg" and len(data) <= MODEL_IMAGE_BYTES
    assert len(base64.b64encode(data)) <= 5 * 1024 * 1024  # Anthropic counts the base64 text
    assert opened(data).size == (MODEL_IMAGE_SIDE, MODEL_IMAGE_SIDE)


def test_a_big_flat_image_stays_png_and_keeps_its_transparency() -> None:
    data, mime = fit_for_model(png(3000, 1000, mode="RGBA"), "image/png")
    image = opened(data)
    assert mime == "image/png" and image.size == (MODEL_IMAGE_SIDE, 523) and image.mode == "RGBA"


def test_what_pillow_cannot_read_goes_as_it_is() -> None:
    assert fit_for_model(b"not an image", "image/png") == (b"not an image", "image/png")


async def test_fitted_images_are_remembered() -> None:
    fitted, big = FittedImages(size=1), png(2000, 100)
    first = await fitted(big, "image/png")
    assert await fitted(big, "image/png") is first
    await fitted(png(1800, 100), "image/png")
    assert await fitted(big, "image/png") is not first and len(fitted._done) == 1


async def test_a_provider_sends_a_big_image_fitted() -> None:
    big = png(2048, 2048, noise=True)

    async def loader(part: ImagePart) -> tuple[bytes, str]:
        return big, "image/png"

    profile = ProviderProfile(name="test", kind="openai", base_url="http://127.0.0.1:9/v1")
    async with aiohttp.ClientSession() as http:
        provider = OpenAIProvider(profile, "sk-test", http, loader)
        loaded = await provider.image_b64(ImagePart(source="comfyui", filename="big.png"))
    assert loaded is not None
    b64, mime = loaded
    assert mime == "image/jpeg" and len(b64) <= 5 * 1024 * 1024
    assert max(opened(base64.b64decode(b64)).size) == MODEL_IMAGE_SIDE


async def test_an_upload_is_read_back_with_the_type_its_name_says(tmp_path: Any) -> None:
    """The node stores a photo-like image as JPEG; `GET /opencode/files` names no type, and the
    panel was served it as PNG."""
    from opencode_agent.core.images import ImageLoader, save_upload

    part = save_upload(tmp_path, b"\xff\xd8\xff jpeg bytes", "image/jpeg")
    assert part.filename.endswith(".jpg") and part.mime_type == "image/jpeg"
    asked = ImagePart(source="upload", filename=part.filename)  # as the route builds it
    assert await ImageLoader(tmp_path)(asked) == (b"\xff\xd8\xff jpeg bytes", "image/jpeg")
