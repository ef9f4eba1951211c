"""The ComfyUI tools against a real ComfyUI, when `OPENCODE_COMFYUI_URL` names one on loopback.

Skipped without it. The run uses only nodes that work on CPU without any model
(EmptyImage → ImageInvert → SaveImage), so any stock ComfyUI can take it.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, AsyncIterator
from urllib.parse import urlparse

import aiohttp
import pytest

from opencode_agent.core.tools import Tool
from opencode_agent.skills.comfyui import HttpComfyAdapter, build_comfyui_skill
from opencode_agent.tests.fakes.comfyui_data import graph
from opencode_agent.tests.fakes.tool_context import FakeToolContext

URL = os.environ.get("OPENCODE_COMFYUI_URL", "")


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


pytestmark = [
    pytest.mark.skipif(not URL, reason="set OPENCODE_COMFYUI_URL to a running ComfyUI to run these"),
    pytest.mark.skipif(bool(URL) and not _loopback(URL), reason="OPENCODE_COMFYUI_URL must be a loopback address"),
]


@pytest.fixture
async def tools() -> AsyncIterator[dict[str, Tool]]:
    async with aiohttp.ClientSession() as http:
        adapter = HttpComfyAdapter(URL, http)
        yield {t.name: t for t in build_comfyui_skill(adapter, run_timeout=120.0).tools}
        await adapter.close()


async def call(tools: dict[str, Tool], name: str, **args: Any) -> Any:
    out = await tools[name].call(FakeToolContext(), args)
    assert not out.is_error, out.content
    return out


async def test_nodes_and_models(tools: dict[str, Tool]) -> None:
    found = await call(tools, "search_nodes", query="ksampler")
    assert '"class_type":"KSampler"' in found.content.replace(" ", "")
    await call(tools, "describe_node", class_type="SaveImage")
    await call(tools, "list_models", folder="checkpoints")


async def test_cpu_run_view_and_get_run(tools: dict[str, Tool]) -> None:
    run = await call(tools, "queue_workflow", graph=graph("cpu_ok"))
    result = json.loads(run.content[run.content.index("{"):])
    assert result["status"] == "success"
    image = result["outputs"]["3"]["images"][0]
    viewed = await call(tools, "view_image", filename=image["filename"], subfolder=image["subfolder"])
    assert viewed.images[0].filename == image["filename"]
    again = await call(tools, "get_run", prompt_id=result["prompt_id"])
    assert '"status":"success"' in again.content
