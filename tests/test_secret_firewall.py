"""The secret firewall: a configured API key appears nowhere but `secrets.json` and the upstream's
`Authorization` header.

One end-to-end story with everything a key could leak into recorded on the way:
1. a provider profile pointing at a loopback OpenAI-format upstream (`tests/fakes/llm_servers`),
   its key set through `PUT /opencode/providers/{name}/key` (and a second profile whose key comes
   from an environment variable);
2. chats over the WebSocket and over SSE: a normal reply, an upstream 401 whose JSON body echoes
   the key, an upstream 500 whose plain-text body echoes it, and a model listing;
3. a workflow with the Opencode node (widgets as the panel fills them from the server's answers)
   and a SaveImage, queued the way the browser queues it (`prompt` + `extra_data.extra_pnginfo`),
   executed in-process (the node's real `run`, on a worker thread, bridged to the server loop) and
   saved with the same PNG text-chunk code as ComfyUI's SaveImage; plus the history entry;
4. the session exported as JSON and Markdown.
Then the key (and every 8-character piece of it) is searched for in: every route's output, every
WS and SSE event, every log record (as emitted, and as raw records before any handler), the
workflow JSON, the PNG's text chunks and bytes, the history, the export, the upstream request
bodies, and every file of the data dir but `secrets.json` (the SQLite file and its WAL included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from opencode_agent.node import NodeBridge, OpencodeAgent
from opencode_agent.routes import ROUTES, SERVICE
from opencode_agent.tests.fakes.llm_servers import Fail, FakeLLMServer, Reply, fake_llm  # noqa: F401
from wsclient import WsClient, run_final

# Shaped like no known vendor key, so only the firewall's knowledge of the value can catch it.
KEY = "gwlive" + secrets.token_hex(16)
ENV_KEY = "envgw" + secrets.token_hex(16)


def pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


class Sink:
    """Everything the outside world got, by where it went."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, content: Any) -> None:
        if isinstance(content, bytes):
            content = content.decode("latin-1")
        elif not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        self.items.append((where, content))

    def leaks(self, secret: str) -> list[str]:
        found = []
        for where, text in self.items:
            for piece in pieces(secret):
                if piece in text:
                    found.append(f"{where}: …{text[max(0, text.find(piece) - 60):text.find(piece) + 60]}…")
                    break
        return found


class RecordAll(logging.Handler):
    """Keeps each record as emitted (formatted, with its traceback)."""

    def __init__(self, sink: Sink, where: str) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.where = where
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.add(self.where, self.format(record) + (record.exc_text or ""))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def app_client(aiohttp_client: Any, make_app: Any, monkeypatch: pytest.MonkeyPatch, sink: Sink) -> Any:
    monkeypatch.setenv("FW_ENV_KEY", ENV_KEY)
    root = logging.getLogger()
    emitted = RecordAll(sink, "log (as emitted, root)")
    old_level = root.level
    root.addHandler(emitted)
    root.setLevel(logging.DEBUG)
    client = await aiohttp_client(make_app())
    # Raw records of `opencode.*`, before any redacting handler sees them.
    raw = RecordAll(sink, "log (raw opencode record)")
    logging.getLogger("opencode").addHandler(raw)
    try:
        yield client
    finally:
        logging.getLogger("opencode").removeHandler(raw)
        root.removeHandler(emitted)
        root.setLevel(old_level)


async def call(client: Any, sink: Sink, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, str]:
    r = await client.request(method, path, json=body, **kw)
    text = await r.text()
    sink.add(f"route {method} {path} -> {r.status}", text)
    return r.status, text


# --------------------------------------------------------------------------- ComfyUI, in process


def ui_workflow(sid: str, skills: str, provider: str, model: str, prompt_text: str) -> dict[str, Any]:
    """The front end's graph (UI format): the Opencode node's hidden widgets hold what the panel chose."""
    return {
        "last_node_id": 5, "last_link_id": 4, "version": 0.4, "groups": [], "config": {}, "extra": {"ds": {}},
        "links": [[1, 1, 0, 2, 0, "STRING"], [2, 3, 0, 4, 0, "IMAGE"], [3, 2, 0, 5, 0, "STRING"]],
        "nodes": [
            {"id": 1, "type": "PrimitiveStringMultiline", "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
             "mode": 0, "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}], "properties": {},
             "widgets_values": [prompt_text]},
            {"id": 2, "type": "OpencodeAgent", "pos": [350, 0], "size": [400, 300], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "text", "type": "STRING", "link": 1}],
             "outputs": [{"name": "reply", "type": "STRING", "links": [3]},
                         {"name": "session_id", "type": "STRING", "links": None}],
             "properties": {"Node name for S&R": "OpencodeAgent"},
             "widgets_values": [sid, skills, provider, model]},
            {"id": 3, "type": "EmptyImage", "pos": [0, 200], "size": [300, 130], "flags": {}, "order": 2,
             "mode": 0, "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "properties": {},
             "widgets_values": [64, 64, 1, 16711680]},
            {"id": 4, "type": "SaveImage", "pos": [350, 350], "size": [300, 300], "flags": {}, "order": 3,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "properties": {},
             "widgets_values": ["opencode_fw"]},
            {"id": 5, "type": "PreviewAny", "pos": [800, 0], "size": [300, 200], "flags": {}, "order": 4,
             "mode": 0, "inputs": [{"name": "source", "type": "*", "link": 3}], "properties": {},
             "widgets_values": []},
        ],
    }


def api_prompt(sid: str, skills: str, provider: str, model: str, prompt_text: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": prompt_text}},
        "2": {"class_type": "OpencodeAgent", "inputs": {"session_id": sid, "skills": skills, "provider": provider,
                                                        "model": model, "text": ["1", 0]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16711680}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "opencode_fw"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def save_image(images: Any, filename_prefix: str, output_dir: Path, prompt: Any, extra_pnginfo: Any) -> dict[str, Any]:
    """ComfyUI's `SaveImage.save_images` metadata path: a `prompt` text chunk, then one per
    `extra_pnginfo` key (the browser sends `workflow`)."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    results = []
    for n, image in enumerate(images):
        img = Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8))
        metadata = PngInfo()
        if prompt is not None:
            metadata.add_text("prompt", json.dumps(prompt))
        if extra_pnginfo is not None:
            for x in extra_pnginfo:
                metadata.add_text(x, json.dumps(extra_pnginfo[x]))
        file = f"{filename_prefix}_{n:05}_.png"
        img.save(output_dir / file, pnginfo=metadata, compress_level=4)
        results.append({"filename": file, "subfolder": "", "type": "output"})
    return {"ui": {"images": results}}


def execute(prompt: dict[str, Any], extra_data: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """A prompt run the way ComfyUI's worker thread runs it (inputs resolved by link, output nodes'
    `ui` collected into the history entry). Blocking: call it on a worker thread."""
    import numpy as np

    def empty_image(width: int, height: int, batch_size: int, color: int) -> tuple[Any]:
        rgb = [(color >> 16 & 255) / 255, (color >> 8 & 255) / 255, (color & 255) / 255]
        return (np.tile(np.array(rgb, dtype=np.float32), (batch_size, height, width, 1)),)

    nodes = {
        "PrimitiveStringMultiline": lambda value: (value,),
        "OpencodeAgent": lambda **kw: OpencodeAgent().run(**kw),
        "EmptyImage": empty_image,
        "SaveImage": lambda images, filename_prefix: save_image(
            images, filename_prefix, output_dir, prompt, extra_data.get("extra_pnginfo")),
        "PreviewAny": lambda source: {"ui": {"text": [str(source)]}},
    }
    results: dict[str, Any] = {}

    def run(node_id: str) -> Any:
        if node_id not in results:
            node = prompt[node_id]
            inputs = {k: (run(v[0])[v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            results[node_id] = nodes[node["class_type"]](**inputs)
        return results[node_id]

    outputs = {nid: run(nid)["ui"] for nid, node in prompt.items() if node["class_type"] in ("SaveImage", "PreviewAny")}
    prompt_id = str(uuid.uuid4())
    return {prompt_id: {"prompt": [0, prompt_id, prompt, extra_data, sorted(outputs)], "outputs": outputs,
                        "status": {"status_str": "success", "completed": True, "messages": []}, "meta": {}}}


# --------------------------------------------------------------------------- the story


async def test_the_key_leaks_nowhere(app_client: Any, fake_llm: FakeLLMServer, sink: Sink, tmp_path: Path) -> None:
    client = app_client
    service = client.app[SERVICE]
    upstream = fake_llm.url + "/v1"

    # 1. Configure two profiles: a stored key, and a key from the environment.
    status, _ = await call(client, sink, "POST", "/opencode/providers",
                           {"name": "fw", "kind": "openai", "base_url": upstream, "default_model": "gpt-fw",
                            "extra": {"max_attempts": 1}})
    assert status == 201
    status, _ = await call(client, sink, "PUT", "/opencode/providers/fw/key", {"key": KEY})
    assert status == 200
    status, _ = await call(client, sink, "POST", "/opencode/providers",
                           {"name": "envp", "kind": "openai", "base_url": upstream, "default_model": "gpt-env",
                            "key_env": "FW_ENV_KEY", "extra": {"max_attempts": 1}})
    assert status == 201

    # 2. Chats: a reply; an upstream 401 echoing the key in JSON; a 500 echoing it in plain text.
    status, text = await call(client, sink, "POST", "/opencode/sessions", {"provider": "fw"})
    session = json.loads(text)
    sid = session["id"]
    ws = WsClient(await client.ws_connect("/opencode/ws"))
    await ws.command("join", session_id=sid, panel=True)
    fake_llm.push(
        Reply("Hello from the fake model."),
        Fail(401, {"error": {"message": f"Incorrect API key provided: {KEY}. Find your key in the dashboard.",
                             "type": "invalid_request_error", "code": "invalid_api_key"}}),
        Fail(500, f"proxy error: upstream refused Authorization: Bearer {KEY} (key={KEY})"),
    )
    outcomes = []
    for text_ in ("first question", "second question", "third question"):
        sent = await ws.command("send", session_id=sid, text=text_)
        outcomes.append((await ws.until(run_final(sent["data"]["run_id"])))["data"]["run"])
    assert [o["status"] for o in outcomes] == ["completed", "error", "error"], outcomes
    assert "[REDACTED]" in outcomes[1]["error"]  # the upstream's message is kept, minus the key
    # Over SSE too, with the env-key profile failing the same way.
    env_sid = json.loads((await call(client, sink, "POST", "/opencode/sessions", {"provider": "envp"}))[1])["id"]
    await ws.command("join", session_id=env_sid, panel=True)
    fake_llm.push(Reply("env reply"),
                  Fail(403, {"error": {"message": f"key {ENV_KEY} has no access", "type": "permission_error"}}))
    for text_ in ("via sse", "again via sse"):
        status, sse = await call(client, sink, "POST", f"/opencode/sessions/{env_sid}/messages", {"text": text_},
                                 headers={"Accept": "text/event-stream"})
        assert status == 200 and "event: run.status" in sse
    await call(client, sink, "GET", "/opencode/providers/fw/models")
    await call(client, sink, "GET", "/opencode/providers/envp/models")

    # 3. A workflow queued from the browser and run in process.
    status, text = await call(client, sink, "GET", "/opencode/providers")
    fw = next(p for p in json.loads(text)["providers"] if p["name"] == "fw")
    assert fw["has_key"] is True and "key" not in fw
    session = json.loads((await call(client, sink, "GET", f"/opencode/sessions/{sid}"))[1])
    widgets = (session["id"], ",".join(session["skills"]), session["provider"], session["model"] or fw["default_model"])
    prompt = api_prompt(*widgets, "describe a red square")
    workflow = ui_workflow(*widgets, "describe a red square")
    browser_post = {"prompt": prompt, "client_id": "browser-1", "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    sink.add("workflow JSON (POST /prompt body)", json.dumps(browser_post))
    fake_llm.push(Reply("A red square, 64 by 64 pixels."))
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    OpencodeAgent.bridge = NodeBridge(loop=asyncio.get_running_loop(), service=lambda: service, timeout=30)
    try:
        history = await asyncio.to_thread(execute, browser_post["prompt"],
                                          {**browser_post["extra_data"], "client_id": "browser-1"}, output_dir)
    finally:
        OpencodeAgent.bridge = None
    entry = next(iter(history.values()))
    assert entry["outputs"]["5"]["text"] == ["A red square, 64 by 64 pixels."]
    sink.add("history", json.dumps(history))
    from PIL import Image

    pngs = sorted(output_dir.glob("*.png"))
    assert len(pngs) == 1
    chunks = Image.open(pngs[0]).text
    assert set(chunks) == {"prompt", "workflow"}
    assert json.loads(chunks["workflow"])["nodes"][1]["widgets_values"] == list(widgets)
    sink.add("PNG text chunks", json.dumps(chunks))
    sink.add("PNG bytes", pngs[0].read_bytes())

    # 4. Export, and every read route once more.
    for fmt in ("json", "md"):
        for s in (sid, env_sid):
            status, _ = await call(client, sink, "GET", f"/opencode/sessions/{s}/export", params={"format": fmt})
            assert status == 200
    for path in ("/opencode/sessions", f"/opencode/sessions/{sid}/messages", f"/opencode/sessions/{env_sid}/messages",
                 "/opencode/providers/fw", "/opencode/providers/envp", f"/opencode/sessions/{sid}/audit",
                 "/opencode/openapi.json", "/opencode/schema.json", "/opencode/skills"):
        await call(client, sink, "GET", path)

    # Everything the sockets got, what the upstream was sent (besides the header), the data dir.
    await ws.command("ping")
    for ev in ws.events:
        sink.add(f"WS event {ev['type']}", json.dumps(ev))
    logs = ws.of_type("log")
    assert logs, "log events reached the panel"
    for req in fake_llm.requests:
        sink.add(f"upstream request body {req.path}", json.dumps(req.body))
        sink.add(f"upstream request headers {req.path} (minus the credential)",
                 json.dumps({k: v for k, v in req.headers.items() if k.lower() != "authorization"}))
    assert any(r.headers.get("Authorization") == f"Bearer {KEY}" for r in fake_llm.requests)
    assert any(r.headers.get("Authorization") == f"Bearer {ENV_KEY}" for r in fake_llm.requests)
    await service.store.flush()
    files = [p for p in service.data_dir.rglob("*") if p.is_file()]
    for path in files:
        if path.name != "secrets.json":
            sink.add(f"data file {path.relative_to(service.data_dir)}", path.read_bytes())
    assert any(p.name.endswith(".sqlite3-wal") or p.name.endswith(".sqlite3") for p in files)
    secrets_file = service.data_dir / "secrets.json"
    assert KEY in secrets_file.read_text() and stat.S_IMODE(secrets_file.stat().st_mode) == 0o600

    # 5. Every other route in the route table once, the writes last; the WebSocket was used above.
    await call_every_remaining_route(client, sink, sid=sid, other_sid=env_sid)

    assert len(sink.items) > 60
    for secret in (KEY, ENV_KEY):
        leaks = sink.leaks(secret)
        assert not leaks, "the key leaked:\n" + "\n".join(leaks[:10])


def route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")


def routes_not_called(sink: Sink) -> list[tuple[str, str]]:
    called = [label.split(" ")[1:3] for label, _ in sink.items if label.startswith("route ")]
    return [(r.method, r.path) for r in ROUTES if r.path != "/opencode/ws" and not any(
        method == r.method and route_pattern(r.path).match(path.split("?")[0]) for method, path in called)]


async def call_every_remaining_route(client: Any, sink: Sink, *, sid: str, other_sid: str) -> None:
    """Calls each route of `ROUTES` this test has not called yet (its answer, error or not, goes to
    the sink), then checks none is left: a route added later is covered here without an edit."""
    bodies: dict[tuple[str, str], Any] = {
        ("PATCH", "/opencode/sessions/{id}"): {"title": "renamed"},
        ("POST", "/opencode/sessions/{id}/abort"): {},
        ("POST", "/opencode/sessions/{id}/permissions"): {"request_id": "perm_none", "decision": "deny"},
        ("PUT", "/opencode/permissions"): {"rules": {}},
        ("PATCH", "/opencode/providers/{name}"): {"default_model": "gpt-fw-2"},
    }
    last = [("DELETE", "/opencode/sessions/{id}"), ("DELETE", "/opencode/providers/{name}/key"),
            ("DELETE", "/opencode/providers/{name}"), ("POST", "/opencode/token/rotate")]
    todo = sorted(routes_not_called(sink), key=lambda r: last.index(r) if r in last else -1)
    for method, path in todo:
        concrete = path.replace("{id}", other_sid if method == "DELETE" else sid).replace("{name}", "fw")
        if path.endswith("/events"):  # an SSE stream: its replay of the whole log, then stop reading
            async with client.get(concrete, params={"after_seq": 0}) as r:
                data = b""
                while b"event: run.status" not in data:
                    data += await asyncio.wait_for(r.content.readany(), 10)
                sink.add(f"route {method} {concrete} -> {r.status}", data.decode())
            continue
        await call(client, sink, method, concrete, bodies.get((method, path)))
    assert not routes_not_called(sink)


async def test_export_redacts_key_shaped_text_the_user_typed(client: Any) -> None:
    """A person pastes a key into the chat by mistake: the export never carries it on."""
    pasted = "sk-proj-" + secrets.token_hex(20)
    r = await client.post("/opencode/sessions", json={"skills": ["echo"]})
    sid = (await r.json())["id"]
    r = await client.post(f"/opencode/sessions/{sid}/messages", json={"text": f"my key is {pasted} oops"},
                          headers={"Accept": "text/event-stream"})
    await r.read()
    for fmt in ("json", "md"):
        text = await (await client.get(f"/opencode/sessions/{sid}/export", params={"format": fmt})).text()
        assert pasted not in text and "[REDACTED]" in text
        assert not [p for p in pieces(pasted[8:], 12) if p in text]
