"""Opencode inside a REAL running ComfyUI: routes, the node, a queued prompt, the ComfyUI tools.

Skipped unless `OPENCODE_COMFYUI_URL` names a running ComfyUI that has Opencode in its
`custom_nodes` (see `tests/real_comfyui/README.md` for how to set one up on the CPU). Nothing here
starts ComfyUI; the tests only talk to it over HTTP and its WebSocket.

- the routes answer under `/opencode` and under ComfyUI's `/api` mirror, and the service started;
- `OpencodeAgent` is in `/object_info` with its inputs and outputs, and its panel script is served;
- a prompt queued through ComfyUI's `/prompt` runs the node (echo skill, no model needed): the
  reply reaches `/history` through a `PreviewAny` node, and so does the no-input path;
- the ComfyUI tools over `HttpComfyAdapter` against that ComfyUI;
- the ComfyUI tools over `InProcessComfyAdapter` inside ComfyUI, driven by the real agent loop
  with a scripted OpenAI-compatible server on loopback in this process standing in for the model
  (only when ComfyUI runs on this machine, since it must reach that server);
- ComfyUI's interrupt stops a node that is waiting for the model.

Each test makes its own session and inputs unique (ComfyUI caches unchanged nodes) and deletes
the sessions and provider profiles it made.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from opencode_agent.core.tools import Tool, ToolOutput
from opencode_agent.skills.comfyui import HttpComfyAdapter, build_comfyui_skill
from opencode_agent.tests.fakes.llm_servers import Fail, FakeLLMServer, FakeToolCall, Reply, Stream, openai_chunks
from opencode_agent.tests.fakes.tool_context import FakeToolContext
from wsclient import WsClient, run_final

URL = os.environ.get("OPENCODE_COMFYUI_URL", "").rstrip("/")
TOKEN = os.environ.get("OPENCODE_COMFYUI_TOKEN", "")  # only needed when ComfyUI is not on loopback

pytestmark = [
    pytest.mark.skipif(not URL, reason="set OPENCODE_COMFYUI_URL to a running ComfyUI with Opencode installed"),
    pytest.mark.timeout(180),
]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"
RUN_TIMEOUT = 120.0
SID = re.compile(r"^ses_(node_)?[0-9a-f]+$")  # a node without a session id has its own: ses_node_…


def _on_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


needs_local_comfyui = pytest.mark.skipif(
    bool(URL) and not _on_loopback(URL),
    reason="ComfyUI must run on this machine to reach the scripted model server on loopback",
)


# --------------------------------------------------------------------------- helpers


class Comfy:
    """A thin client for the running ComfyUI and the Opencode routes it serves."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.sessions: list[str] = []
        self.providers: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202)
                      ) -> Any:
        headers = {"X-Opencode-Token": TOKEN} if TOKEN and "opencode" in path else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, URL + path, **kwargs) as resp:
            text = await resp.text()
            assert resp.status in ok, f"{method} {path}: HTTP {resp.status}: {text[:500]}"
            return json.loads(text) if text and resp.content_type == "application/json" else text

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    # ---- ComfyUI

    async def queue(self, prompt: dict[str, Any]) -> str:
        answer = await self.post("/prompt", {"prompt": prompt, "client_id": f"opencode-test-{uuid.uuid4().hex}"})
        assert answer.get("node_errors") in ({}, None), answer
        return answer["prompt_id"]

    async def history(self, prompt_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """The prompt's history entry once it finished (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = (await self.get(f"/history/{prompt_id}")).get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                return entry
            await asyncio.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    async def run(self, prompt: dict[str, Any]) -> dict[str, Any]:
        return await self.history(await self.queue(prompt))

    # ---- Opencode

    async def new_session(self, **body: Any) -> dict[str, Any]:
        session = await self.post("/opencode/sessions", body)
        self.sessions.append(session["id"])
        return session

    async def new_provider(self, base_url: str) -> str:
        """A profile for the scripted model `gpt-test`, declared with tools and vision (an
        undeclared model gets no vision, and a tool's images would reach it as a note)."""
        name = f"rt-{uuid.uuid4().hex[:10]}"
        caps = {"tools": True, "vision": True, "context_tokens": 128_000}
        await self.post("/opencode/providers", {"name": name, "kind": "openai", "base_url": base_url,
                                                "default_model": "gpt-test", "models": {"gpt-test": caps}})
        self.providers.append(name)
        return name

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        return (await self.get(f"/opencode/sessions/{session_id}/messages?limit=200"))["messages"]

    async def wait_reply(self, session_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """The last assistant message once it stopped (completed, error or aborted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = await self.messages(session_id)
            if msgs and msgs[-1]["role"] == "assistant" and msgs[-1]["status"] in ("completed", "error", "aborted"):
                return msgs[-1]
            await asyncio.sleep(0.2)
        raise AssertionError(f"session {session_id} did not answer within {timeout:.0f} s")

    async def cleanup(self) -> None:
        for sid in self.sessions:
            await self.request("DELETE", f"/opencode/sessions/{sid}", ok=(200, 404))
        for name in self.providers:
            await self.request("DELETE", f"/opencode/providers/{name}", ok=(200, 404))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
async def comfy(http: aiohttp.ClientSession) -> AsyncIterator[Comfy]:
    client = Comfy(http)
    try:
        yield client
    finally:
        await client.cleanup()


@pytest.fixture
async def object_info(comfy: Comfy) -> dict[str, Any]:
    return await comfy.get("/object_info")


def require_nodes(object_info: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in object_info]
    if missing:
        pytest.skip(f"this ComfyUI has no {', '.join(missing)} node")


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def agent(session_id: str = "", skills: str = "echo", provider: str = "", model: str = "", **links: Any) -> dict[str, Any]:
    return {"class_type": "OpencodeAgent",
            "inputs": {"session_id": session_id, "skills": skills, "provider": provider, "model": model, **links}}


def preview(source: list[Any]) -> dict[str, Any]:
    return {"class_type": "PreviewAny", "inputs": {"source": source}}


def text_node(value: str) -> dict[str, Any]:
    return {"class_type": "PrimitiveString", "inputs": {"value": value}}


def preview_text(entry: dict[str, Any], node_id: str) -> str:
    texts = entry["outputs"][node_id]["text"]
    assert len(texts) == 1, texts
    return texts[0]


def status_messages(entry: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [data for name, data in entry["status"].get("messages", []) if name == kind]


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_routes_answer_under_both_prefixes(comfy: Comfy, prefix: str) -> None:
    health = await comfy.get(f"{prefix}/opencode/health")
    assert health["status"] == "ok" and health["uptime_s"] >= 0  # the service started in cleanup_ctx
    version = await comfy.get(f"{prefix}/opencode/version")
    assert version["name"] == "opencode" and "sessions" in version["capabilities"]
    skills = {s["id"]: s for s in (await comfy.get(f"{prefix}/opencode/skills"))["skills"]}
    assert {"assistant", "echo", "comfyui"} <= set(skills)
    tools = {t["name"] for t in skills["comfyui"]["tools"]}
    assert {"search_nodes", "describe_node", "queue_workflow", "get_run", "view_image", "list_models"} <= tools
    page = await comfy.get(f"{prefix}/opencode/sessions")
    assert isinstance(page["sessions"], list)


async def test_routes_refuse_a_foreign_origin(comfy: Comfy, http: aiohttp.ClientSession) -> None:
    async with http.get(URL + "/api/opencode/sessions", headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403  # ComfyUI's own origin check or Opencode's, whichever answers first


async def test_panel_script_is_served(comfy: Comfy) -> None:
    extensions = await comfy.get("/extensions")
    ours = [e for e in extensions if e.endswith("/opencode.js")]
    assert ours, f"no opencode.js among ComfyUI's extensions: {extensions[:5]}..."
    script = await comfy.get(ours[0])
    assert len(script) > 1000
    page = await comfy.request("GET", "/opencode/")
    assert "<html" in page.lower()


# --------------------------------------------------------------------------- the node


async def test_node_in_object_info(comfy: Comfy) -> None:
    info = (await comfy.get("/object_info/OpencodeAgent"))["OpencodeAgent"]
    assert info["display_name"] == "Opencode Agent" and info["category"] == "Opencode"
    assert info["output"] == ["STRING", "STRING"] and info["output_name"] == ["reply", "session_id"]
    assert list(info["input"]["required"]) == ["session_id", "skills", "provider", "model"]
    assert all(spec[0] == "STRING" for spec in info["input"]["required"].values())
    optional = info["input"]["optional"]
    assert optional["text"][0] == "STRING" and optional["text"][1].get("forceInput") is True
    assert optional["image"][0] == "IMAGE"
    assert info["output_node"] is True  # a graph holding only this node (fed by a text node) runs


async def test_prompt_with_the_node_replies_in_history(comfy: Comfy, object_info: dict[str, Any]) -> None:
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    text = unique("hello from the graph")
    entry = await comfy.run({"1": text_node(text), "2": agent(text=["1", 0]),
                             "3": preview(["2", 0]), "4": preview(["2", 1])})
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert preview_text(entry, "3") == text  # the echo skill answers with the message itself
    sid = preview_text(entry, "4")
    assert SID.match(sid), sid
    comfy.sessions.append(sid)

    session = await comfy.get(f"/opencode/sessions/{sid}")
    assert session["skills"] == ["echo"]
    msgs = await comfy.messages(sid)
    assert [(m["role"], m["status"]) for m in msgs] == [("user", "completed"), ("assistant", "completed")]
    assert msgs[0]["parts"][0]["text"] == text and msgs[1]["skill"] == "echo"

    # The same session again from the graph: the node keeps the conversation.
    second = unique("second message")
    entry = await comfy.run({"1": text_node(second), "2": agent(sid, text=["1", 0]), "3": preview(["2", 0])})
    assert preview_text(entry, "3") == second
    assert len(await comfy.messages(sid)) == 4

    # Queued again unchanged: the node's output stays cached and the text is not sent twice
    # (IS_CHANGED, which sees no links, used to fold in the node's own reply).
    entry = await comfy.run({"1": text_node(second), "2": agent(sid, text=["1", 0]), "3": preview(["2", 0])})
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(await comfy.messages(sid)) == 4


async def test_node_without_inputs_outputs_the_last_reply(comfy: Comfy, object_info: dict[str, Any]) -> None:
    require_nodes(object_info, "PreviewAny")
    session = await comfy.new_session(skills=["echo"])
    sid = session["id"]
    text = unique("asked in the panel")
    await comfy.post(f"/opencode/sessions/{sid}/messages", {"text": text})
    await comfy.wait_reply(sid)

    entry = await comfy.run({"2": agent(sid), "3": preview(["2", 0]), "4": preview(["2", 1])})
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert preview_text(entry, "3") == text and preview_text(entry, "4") == sid

    # A new message in the session makes the unchanged node run again (IS_CHANGED sees it).
    newer = unique("a newer answer")
    await comfy.post(f"/opencode/sessions/{sid}/messages", {"text": newer})
    await comfy.wait_reply(sid)
    entry = await comfy.run({"2": agent(sid), "3": preview(["2", 0])})
    assert preview_text(entry, "3") == newer

    # No session and no input: nothing to say, and no session is made.
    before = {s["id"] for s in (await comfy.get("/opencode/sessions?limit=200"))["sessions"]}
    entry = await comfy.run({"2": agent("", model=unique("unused")), "3": preview(["2", 0]),
                             "4": preview(["2", 1])})
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert preview_text(entry, "3") == "" and preview_text(entry, "4") == ""
    after = {s["id"] for s in (await comfy.get("/opencode/sessions?limit=200"))["sessions"]}
    assert after == before


async def test_node_with_an_unknown_session_fails_with_a_clear_error(comfy: Comfy, object_info: dict[str, Any]) -> None:
    require_nodes(object_info, "PreviewAny")
    missing = f"ses_{uuid.uuid4().hex[:20]}"
    entry = await comfy.run({"2": agent(missing), "3": preview(["2", 0])})
    assert entry["status"]["status_str"] == "error"
    [error] = status_messages(entry, "execution_error")
    assert error["node_type"] == "OpencodeAgent" and f"no session {missing}" in error["exception_message"]


async def test_node_sends_an_image_from_the_graph(comfy: Comfy, object_info: dict[str, Any]) -> None:
    require_nodes(object_info, "PrimitiveString", "PreviewAny", "EmptyImage")
    text = unique("look at this")
    entry = await comfy.run({
        "1": text_node(text),
        "5": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0x00FF00}},
        "2": agent(text=["1", 0], image=["5", 0]),
        "3": preview(["2", 0]), "4": preview(["2", 1]),
    })
    assert entry["status"]["status_str"] == "success", entry["status"]
    sid = preview_text(entry, "4")
    comfy.sessions.append(sid)
    assert preview_text(entry, "3") == text
    user = (await comfy.messages(sid))[0]
    [image] = [p for p in user["parts"] if p["type"] == "image"]
    assert image["source"] == "upload" and image["filename"].endswith(".png")


async def test_websocket_through_comfyui(comfy: Comfy, http: aiohttp.ClientSession) -> None:
    session = await comfy.new_session(skills=["echo"])
    params = {"token": TOKEN} if TOKEN else None
    async with http.ws_connect(URL + "/api/opencode/ws", params=params) as socket:
        ws = WsClient(socket)
        ack = await ws.command("join", session_id=session["id"])
        assert ack["type"] == "ack"
        sent = await ws.command("send", session_id=session["id"], text="over the socket")
        final = await ws.until(run_final(sent["data"]["run_id"]), timeout=30)
        assert final["data"]["run"]["status"] == "completed"
        assert "".join(e["data"]["text"] for e in ws.of_type("message.delta")) == "over the socket"


# --------------------------------------------------------------------------- HTTP adapter tools


@pytest.fixture
async def http_tools(http: aiohttp.ClientSession) -> AsyncIterator[dict[str, Tool]]:
    adapter = HttpComfyAdapter(URL, http)
    try:
        yield {t.name: t for t in build_comfyui_skill(adapter, run_timeout=RUN_TIMEOUT).tools}
    finally:
        await adapter.close()


async def call(tools: dict[str, Tool], name: str, **args: Any) -> ToolOutput:
    return await tools[name].call(FakeToolContext(), args)


def payload(out: ToolOutput) -> Any:
    """The JSON part of a tool's answer (after an optional one-line headline)."""
    assert not out.is_error, out.content
    return json.loads(out.content[out.content.index("{"):])


def cpu_graph(prefix: str) -> dict[str, Any]:
    graph = json.loads((FIXTURES / "workflow_api_cpu_ok.json").read_text())
    graph["3"]["inputs"]["filename_prefix"] = prefix  # a new prefix: ComfyUI runs it instead of caching
    return graph


async def test_http_tools_find_and_describe_nodes(http_tools: dict[str, Tool]) -> None:
    found = payload(await call(http_tools, "search_nodes", query="opencode agent"))
    assert found["results"][0]["class_type"] == "OpencodeAgent"
    found = payload(await call(http_tools, "search_nodes", query="invert image"))
    assert "ImageInvert" in [r["class_type"] for r in found["results"][:3]]

    node = payload(await call(http_tools, "describe_node", class_type="OpencodeAgent"))
    assert [(o["index"], o["name"], o["type"]) for o in node["outputs"]] == [(0, "reply", "STRING"), (1, "session_id", "STRING")]
    inputs = {i["name"]: i for i in node["inputs"]}
    assert inputs["text"]["required"] is False and "no widget" in inputs["text"]["connect"]
    node = payload(await call(http_tools, "describe_node", class_type="KSampler"))
    assert {"seed", "steps", "sampler_name"} <= {i["name"] for i in node["inputs"]}

    out = await call(http_tools, "describe_node", class_type="NoSuchNodeAnywhere")
    assert out.is_error and "unknown node type" in out.content


async def test_http_tools_queue_a_cpu_workflow_and_read_the_run(http_tools: dict[str, Tool]) -> None:
    prefix = f"opencode_rt_{uuid.uuid4().hex[:8]}"
    out = await call(http_tools, "queue_workflow", graph=cpu_graph(prefix))
    result = payload(out)
    assert result["status"] == "success", out.content
    [image] = result["outputs"]["3"]["images"]
    assert image["filename"].startswith(prefix) and image["type"] == "output"

    again = payload(await call(http_tools, "get_run", prompt_id=result["prompt_id"]))
    assert again["status"] == "success" and again["outputs"]["3"]["images"] == [image]

    seen = await call(http_tools, "view_image", filename=image["filename"], subfolder=image["subfolder"])
    assert not seen.is_error and "64x64 image/png" in seen.content and seen.images[0].source == "comfyui"

    out = await call(http_tools, "get_run", prompt_id=str(uuid.uuid4()))
    assert out.is_error and "no run" in out.content


async def test_http_tools_report_an_invalid_workflow(http_tools: dict[str, Tool]) -> None:
    graph = cpu_graph("never_written")
    graph["2"]["class_type"] = "NoSuchNodeAnywhere"
    out = await call(http_tools, "queue_workflow", graph=graph)
    assert out.is_error and "NoSuchNodeAnywhere" in out.content and "nothing was queued" in out.content


async def test_http_tools_run_v3_nodes_and_find_the_run_among_recent_ones(http_tools: dict[str, Tool]) -> None:
    """A dynamic combo (resize_type and resize_type.multiplier), a match type and a growing list
    (images.image0, images.image1): ComfyUI 0.3.5x+ nodes written against its v3 schema."""
    out = await call(http_tools, "describe_node", class_type="ResizeImageMaskNode")
    if out.is_error:
        pytest.skip("this ComfyUI has no v3 ResizeImageMaskNode")
    prefix = f"opencode_v3_{uuid.uuid4().hex[:8]}"
    graph = cpu_graph(prefix)
    graph["4"] = {"class_type": "ResizeImageMaskNode", "inputs": {"input": ["2", 0], "resize_type": "scale by multiplier",
                                                                  "resize_type.multiplier": 0.5, "scale_method": "area"}}
    graph["5"] = {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["4", 0], "images.image1": ["4", 0]}}
    graph["3"]["inputs"]["images"] = ["5", 0]
    result = payload(await call(http_tools, "queue_workflow", graph=graph))
    assert result["status"] == "success" and len(result["outputs"]["3"]["images"]) == 2

    recent = payload(await call(http_tools, "recent_runs", limit=3))
    assert recent["runs"][0]["prompt_id"] == result["prompt_id"] and recent["runs"][0]["status"] == "success"
    assert recent["runs"][0]["images"][0].startswith(prefix)


async def test_every_nodes_example_passes_the_local_check(http: aiohttp.ClientSession) -> None:
    """describe_node's example of every node this ComfyUI has, each link fed by a node that outputs
    its type, passes the local check (before v3 inputs were understood, 153 of 0.33.0's 886 failed)."""
    from opencode_agent.tests.fakes.comfyui_data import example_problems

    async with http.get(f"{URL}/object_info") as resp:
        info = await resp.json()
    refused = example_problems(info)
    assert refused == {}


async def test_http_tools_list_models(http_tools: dict[str, Tool]) -> None:
    listed = payload(await call(http_tools, "list_models", folder="checkpoints"))
    assert listed["folder"] == "checkpoints" and listed["count"] == len(listed["files"])
    out = await call(http_tools, "list_models", folder="no_such_folder")
    assert out.is_error


# --------------------------------------------------------------------------- in-process tools


@pytest.fixture
async def model_server() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    try:
        yield server
    finally:
        await server.close()


@needs_local_comfyui
async def test_inprocess_tools_through_the_agent_loop(comfy: Comfy, model_server: FakeLLMServer) -> None:
    """The model (scripted) calls each ComfyUI tool; Opencode runs them inside ComfyUI itself."""
    provider = await comfy.new_provider(model_server.url + "/v1")
    session = await comfy.new_session(skills=["assistant", "comfyui"], provider=provider, model="gpt-test")
    sid = session["id"]
    await comfy.request("PATCH", f"/opencode/sessions/{sid}", {"permissions": {"run": "allow"}})
    prefix = f"opencode_ip_{uuid.uuid4().hex[:8]}"
    model_server.push(
        Reply(tool_calls=[FakeToolCall("search_nodes", {"query": "opencode agent"}, id="c1")]),
        Reply(tool_calls=[FakeToolCall("describe_node", {"class_type": "OpencodeAgent"}, id="c2")]),
        Reply(tool_calls=[FakeToolCall("queue_workflow", {"graph": cpu_graph(prefix)}, id="c3")]),
        Reply(tool_calls=[FakeToolCall("list_models", {"folder": "checkpoints"}, id="c4")]),
        Reply(tool_calls=[FakeToolCall("view_image", {"filename": f"{prefix}_00001_.png"}, id="c5")]),
        Reply(text="done: one inverted square"),
    )
    await comfy.post(f"/opencode/sessions/{sid}/messages", {"text": "make an inverted red square"})
    reply = await comfy.wait_reply(sid)
    assert reply["status"] == "completed", reply
    results = {p["name"]: p for p in reply["parts"] if p["type"] == "tool_result"}
    assert set(results) == {"search_nodes", "describe_node", "queue_workflow", "list_models", "view_image"}
    assert not [p for p in results.values() if p["is_error"]], results
    assert json.loads(results["search_nodes"]["content"])["results"][0]["class_type"] == "OpencodeAgent"
    assert '"name": "reply"' in results["describe_node"]["content"]
    run = results["queue_workflow"]["content"]
    assert run.startswith("Run ") and f"{prefix}_00001_.png" in run and '"status":"success"' in run
    prompt_id = run.split()[1]
    assert (await comfy.get(f"/history/{prompt_id}"))[prompt_id]["status"]["status_str"] == "success"
    assert results["view_image"]["images"][0]["filename"] == f"{prefix}_00001_.png"
    assert reply["parts"][-1] == {"type": "text", "text": "done: one inverted square"}

    # The model saw the tools' results, and view_image's picture went to it as an image.
    assert len(model_server.requests) == 6
    last = model_server.requests[-1].body["messages"]
    images = [c for m in last if isinstance(m.get("content"), list) for c in m["content"] if c.get("type") == "image_url"]
    assert images and images[0]["image_url"]["url"].startswith("data:image/png;base64,")


@needs_local_comfyui
async def test_a_node_whose_reply_queues_a_workflow_does_not_wait_for_itself(
        comfy: Comfy, model_server: FakeLLMServer, object_info: dict[str, Any]) -> None:
    """The node holds ComfyUI's only worker while it waits for the reply, so a workflow the reply
    queues cannot start before the reply ends: `queue_workflow` used to follow it until its
    timeout (600 s). It queues and says so; the workflow runs once the graph is done."""
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    provider = await comfy.new_provider(model_server.url + "/v1")
    session = await comfy.new_session(skills=["assistant", "comfyui"], provider=provider, model="gpt-test")
    sid = session["id"]
    await comfy.request("PATCH", f"/opencode/sessions/{sid}", {"permissions": {"run": "allow"}})
    prefix = f"opencode_held_{uuid.uuid4().hex[:8]}"
    model_server.push(Reply(tool_calls=[FakeToolCall("queue_workflow", {"graph": cpu_graph(prefix)}, id="c1")]),
                      Reply(text="queued it"))
    entry = await comfy.run({"1": text_node(unique("queue a square")),
                             "2": agent(sid, skills="assistant,comfyui", provider=provider, model="gpt-test",
                                        text=["1", 0]),
                             "3": preview(["2", 0])})  # RUN_TIMEOUT, well under the tool's 600 s
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert preview_text(entry, "3") == "queued it"
    reply = await comfy.wait_reply(sid)
    result = [p for p in reply["parts"] if p["type"] == "tool_result"][0]
    assert not result["is_error"] and "holds ComfyUI's worker" in result["content"]
    queued = result["content"].split()[2].rstrip(".")
    done = await comfy.history(queued, timeout=60)  # it ran once the graph had finished
    assert done["status"]["status_str"] == "success", done["status"]


@needs_local_comfyui
async def test_interrupt_stops_a_node_waiting_for_the_model(comfy: Comfy, model_server: FakeLLMServer,
                                                            object_info: dict[str, Any]) -> None:
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    provider = await comfy.new_provider(model_server.url + "/v1")
    model_server.push(Stream(openai_chunks(Reply(text="this answer never ends")), stall_after=2))
    session = await comfy.new_session(skills=["assistant"], provider=provider)
    sid = session["id"]
    prompt_id = await comfy.queue({"1": text_node(unique("wait for me")), "2": agent(sid, skills="assistant", text=["1", 0]),
                                   "3": preview(["2", 0])})
    deadline = time.monotonic() + 30
    while not model_server.requests:  # the node is now waiting on the model
        assert time.monotonic() < deadline, "the node never called the model"
        await asyncio.sleep(0.1)
    await comfy.post("/interrupt", {"prompt_id": prompt_id})
    entry = await comfy.history(prompt_id, timeout=30)
    assert status_messages(entry, "execution_interrupted"), entry["status"]
    reply = await comfy.wait_reply(sid, timeout=30)
    assert reply["status"] == "aborted"


@needs_local_comfyui
@pytest.mark.parametrize("linked", [False, True], ids=["its session id", "a linked session id"])
async def test_a_reply_queueing_a_graph_that_sends_to_its_own_session_does_not_deadlock(
        comfy: Comfy, model_server: FakeLLMServer, object_info: dict[str, Any], linked: bool) -> None:
    """The reviewer's case: text → Opencode node (this very session) → ...; asked in the panel to
    run it, the model queues the canvas graph. The graph's node sent to the session whose reply
    waited in `queue_workflow`: each waited for the other, ComfyUI's worker held for 600 s. Linked,
    the session is known only once the node runs: the tool lets go of the run then."""
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    provider = await comfy.new_provider(model_server.url + "/v1")
    sid = (await comfy.new_session(skills=["assistant", "comfyui"], provider=provider, model="gpt-test"))["id"]
    await comfy.request("PATCH", f"/opencode/sessions/{sid}", {"permissions": {"run": "allow"}})
    graph = {"1": text_node(unique("a red square")),
             "2": agent(["9", 0] if linked else sid, skills="assistant,comfyui", provider=provider, model="gpt-test",
                        text=["1", 0]),
             "3": preview(["2", 0]), "9": text_node(sid)}
    model_server.push(Reply(tool_calls=[FakeToolCall("queue_workflow", {"graph": graph}, id="c1")]),
                      Reply(text="it is queued"), Reply(text="a red square, enhanced"))
    started = time.monotonic()
    await comfy.post(f"/opencode/sessions/{sid}/messages", {"text": "run my workflow"})
    deadline = started + 60
    while len(msgs := await comfy.messages(sid)) < 4 or msgs[-1]["status"] == "streaming":
        assert time.monotonic() < deadline, [(m["role"], m["status"]) for m in msgs]
        await asyncio.sleep(0.2)
    result = [p for p in msgs[1]["parts"] if p["type"] == "tool_result"][0]
    assert result["content"].startswith("Queued as ") and "Not waited for" in result["content"], result
    assert [(m["role"], m["status"]) for m in msgs] == [("user", "completed"), ("assistant", "completed")] * 2
    done = await comfy.history(result["content"].split()[2].rstrip("."), timeout=30)
    assert done["status"]["status_str"] == "success" and preview_text(done, "3") == "a red square, enhanced"
    assert time.monotonic() - started < 30  # not ComfyUI's worker held for the tool's 600 s


async def test_node_images_reach_the_model_fitted_and_a_cut_batch_is_told(
        comfy: Comfy, object_info: dict[str, Any]) -> None:
    """A batch of 6 arrived as 4 and nobody was told; a 2048x2048 noisy image went out as a 7.6 MB
    PNG (Anthropic takes 5 MB an image, counted on its base64 text)."""
    require_nodes(object_info, "PrimitiveString", "PreviewAny", "EmptyImage", "ImageAddNoise")
    text = unique("what is this")
    entry = await comfy.run({
        "1": text_node(text),
        "4": {"class_type": "EmptyImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 6, "color": 0x808080}},
        "5": {"class_type": "ImageAddNoise", "inputs": {"image": ["4", 0], "seed": 1, "strength": 1.0}},
        "2": agent(text=["1", 0], image=["5", 0]),
        "3": preview(["2", 0]), "6": preview(["2", 1]),
    })
    assert entry["status"]["status_str"] == "success", entry["status"]
    sid = preview_text(entry, "6")
    comfy.sessions.append(sid)
    note = ("[Opencode node's image input: only the first 4 of its 6 images are attached; "
            "they were 2048x2048, scaled down to fit 1568 px.]")
    assert preview_text(entry, "3") == f"{text}\n\n{note}"  # echo: what the model was sent
    images = [p for p in (await comfy.messages(sid))[0]["parts"] if p["type"] == "image"]
    assert len(images) == 4
    async with comfy.http.get(f"{URL}/opencode/files", params={"source": "upload", "filename": images[0]["filename"]}) as r:
        data = await r.read()
    assert images[0]["mime_type"] == r.content_type == "image/jpeg" and len(data) <= 3_750_000


@needs_local_comfyui
async def test_a_node_without_a_session_id_keeps_one_session_and_no_failed_one(
        comfy: Comfy, model_server: FakeLLMServer, object_info: dict[str, Any]) -> None:
    """Every run made a new session, and a provider's failure left one behind each time."""
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    provider = await comfy.new_provider(model_server.url + "/v1")
    graph_id = uuid.uuid4().hex[:6]  # the API graph is known by its nodes: these ids are this test's own
    ids = {"text": f"t{graph_id}", "node": f"n{graph_id}", "reply": f"r{graph_id}", "sid": f"s{graph_id}"}

    def graph(text: str) -> dict[str, Any]:
        return {ids["text"]: text_node(text),
                ids["node"]: agent(skills="assistant", provider=provider, model="gpt-test", text=[ids["text"], 0]),
                ids["reply"]: preview([ids["node"], 0]), ids["sid"]: preview([ids["node"], 1])}

    before = {s["id"] for s in (await comfy.get("/opencode/sessions?limit=200"))["sessions"]}
    model_server.push(Fail(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}))
    failed = await comfy.run(graph(unique("hi")))
    assert failed["status"]["status_str"] == "error"
    assert {s["id"] for s in (await comfy.get("/opencode/sessions?limit=200"))["sessions"]} == before
    model_server.push(Reply(text="one"), Reply(text="two"))
    first, second = await comfy.run(graph(unique("hi"))), await comfy.run(graph(unique("again")))
    sid = preview_text(first, ids["sid"])
    comfy.sessions.append(sid)
    assert preview_text(first, ids["reply"]) == "one" and preview_text(second, ids["reply"]) == "two"
    assert preview_text(second, ids["sid"]) == sid and sid.startswith("ses_node_")
    assert {s["id"] for s in (await comfy.get("/opencode/sessions?limit=200"))["sessions"]} == before | {sid}


@needs_local_comfyui
async def test_stopping_a_reply_stops_the_run_it_follows(comfy: Comfy, model_server: FakeLLMServer,
                                                         object_info: dict[str, Any]) -> None:
    """`queue_workflow` stopped by the user cancels its run in ComfyUI (in-process: under the prompt
    queue's lock, so the interrupt cannot land on the next prompt)."""
    require_nodes(object_info, "PrimitiveString", "PreviewAny")
    provider = await comfy.new_provider(model_server.url + "/v1")
    asker = (await comfy.new_session(skills=["assistant", "comfyui"], provider=provider, model="gpt-test"))["id"]
    await comfy.request("PATCH", f"/opencode/sessions/{asker}", {"permissions": {"run": "allow"}})
    waiting = (await comfy.new_session(skills=["assistant"], provider=provider, model="gpt-test"))["id"]
    graph = {"1": text_node(unique("wait for me")), "2": agent(waiting, skills="assistant", text=["1", 0]),
             "3": preview(["2", 0])}  # runs until its node's model answers: never
    model_server.push(Reply(tool_calls=[FakeToolCall("queue_workflow", {"graph": graph}, id="c1")]),
                      Stream(openai_chunks(Reply(text="this answer never ends")), stall_after=2))
    await comfy.post(f"/opencode/sessions/{asker}/messages", {"text": "run it"})
    deadline = time.monotonic() + 30
    while len(model_server.requests) < 2:  # the graph's node is now waiting on the model
        assert time.monotonic() < deadline, "the graph's node never called the model"
        await asyncio.sleep(0.1)
    await comfy.post(f"/opencode/sessions/{asker}/abort", {})
    assert (await comfy.wait_reply(asker, timeout=30))["status"] == "aborted"
    assert (await comfy.wait_reply(waiting, timeout=30))["status"] == "aborted"  # ComfyUI interrupted the node
    queue = await comfy.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"]
