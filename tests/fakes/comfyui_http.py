"""`FakeComfyUI`: a loopback aiohttp server answering like ComfyUI 0.3.64, from recorded data.

Routes: `/object_info`, `/prompt`, `/queue` (GET, and POST `{"delete": [...]}`), `/interrupt`, `/history/{id}`,
`/history?max_items=N`, `/models`, `/models/{folder}`, `/view`
and `/ws?clientId=`. A posted graph is answered the way the recording says: the txt2img graph
gets the recorded 400 with `node_errors`, a graph naming an unknown class the recorded
unknown-node 400, and the two recorded runs their prompt id. A run's recorded `/ws` frames go to
the socket of the client id that queued it, once that client has looked the run up in
`/history` (so the test does not depend on which side is faster); the history entry appears just
before the terminal frame, as late as a real ComfyUI writes it. Any other graph stays queued.
Every request path is recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

from aiohttp import web

from .comfyui_data import RecordedRun, graph, load, match_run, object_info, recorded_runs, saved_png, SAVED_IMAGE


class FakeComfyUI:
    def __init__(self) -> None:
        self.object_info = object_info()
        self.folders: list[str] = load("models_folders.json")
        self.models: dict[str, list[str]] = {f: [] for f in self.folders}
        self.raw_models: dict[str, bytes] = {}  # a folder answered with these bytes, not JSON
        self.files: dict[tuple[str, str, str], bytes] = {("output", "", SAVED_IMAGE): saved_png()}
        self.runs = recorded_runs()
        self.history: dict[str, dict[str, Any]] = {}
        self.queue: dict[str, list[Any]] = load("queue_empty.json")
        self.record_history = True
        # As the real ComfyUI does: the last event goes out, then, this much later, the history is
        # saved and the run leaves the running queue (None: history first, as a fast machine shows it).
        self.history_lag: float | None = None
        self.requests: list[str] = []
        self.history_queries: list[dict[str, str]] = []
        self.posted: list[dict[str, Any]] = []
        self.queue_posts: list[dict[str, Any]] = []
        self.interrupts: list[dict[str, Any]] = []
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._looked_up: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append(request.path)
            return await handler(request)

        app.middlewares.append(record)
        app.router.add_get("/object_info", self.get_object_info)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.post_interrupt)
        app.router.add_get("/history", self.get_recent_history)
        app.router.add_get("/history/{prompt_id}", self.get_history)
        app.router.add_get("/models", self.get_folders)
        app.router.add_get("/models/{folder}", self.get_models)
        app.router.add_get("/view", self.get_view)
        app.router.add_get("/ws", self.websocket)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

    # ---- handlers

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info)

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posted.append(body)
        prompt = body["prompt"]
        if any(node.get("class_type") not in self.object_info for node in prompt.values()):
            recorded = load("post_prompt_unknown_node_response.json")
            return web.json_response(recorded["body"], status=recorded["status"])
        if prompt == graph("txt2img"):
            recorded = load("post_prompt_invalid_response.json")
            return web.json_response(recorded["body"], status=recorded["status"])
        run = match_run(self.runs, prompt)
        if run is None:  # queued, never runs
            prompt_id = str(uuid.uuid4())
            self.queue["queue_pending"].append([len(self.posted), prompt_id, prompt, {}, []])
            return web.json_response({"prompt_id": prompt_id, "number": len(self.posted), "node_errors": {}})
        self._looked_up[run.prompt_id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._replay(run, body.get("client_id", "")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"prompt_id": run.prompt_id, "number": run.number, "node_errors": {}})

    async def _replay(self, run: RecordedRun, client_id: str) -> None:
        await self._looked_up[run.prompt_id].wait()
        ws = self.sockets.get(client_id)
        for frame in run.body_frames:
            if ws is not None:
                await ws.send_json(frame)
        running = [run.number, run.prompt_id, {}, {}, []]
        if self.history_lag is not None:
            self.queue["queue_running"].append(running)
        elif self.record_history:
            self.history[run.prompt_id] = copy.deepcopy(run.history)
        for frame in run.tail_frames:
            if ws is not None:
                await ws.send_json(frame)
        if self.history_lag is not None:
            await asyncio.sleep(self.history_lag)
            if self.record_history:
                self.history[run.prompt_id] = copy.deepcopy(run.history)
            self.queue["queue_running"].remove(running)

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue)

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.queue_posts.append(body)
        delete = set(body.get("delete", []))
        self.queue["queue_pending"] = [i for i in self.queue["queue_pending"] if i[1] not in delete]
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        self.interrupts.append(await request.json())
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in self.history:
            return web.json_response({prompt_id: self.history[prompt_id]})
        if prompt_id in self._looked_up:
            self._looked_up[prompt_id].set()
        return web.json_response({})

    async def get_recent_history(self, request: web.Request) -> web.Response:
        """The last `max_items` entries, oldest first, as ComfyUI's `get_history` gives them."""
        self.history_queries.append(dict(request.query))
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]):]
        return web.json_response(dict(items))

    async def get_folders(self, request: web.Request) -> web.Response:
        return web.json_response(self.folders)

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder in self.raw_models:
            return web.Response(body=self.raw_models[folder], content_type="application/octet-stream")
        if folder not in self.models:
            return web.Response(status=404)
        return web.json_response(self.models[folder])

    async def get_view(self, request: web.Request) -> web.Response:
        q = request.query
        data = self.files.get((q.get("type", "output"), q.get("subfolder", ""), q.get("filename", "")))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[client_id] = ws
        greeting = copy.deepcopy(self.runs["ok"].greeting)
        greeting["data"]["sid"] = client_id
        await ws.send_json(greeting)
        async for _ in ws:  # ComfyUI ignores what clients send
            pass
        if self.sockets.get(client_id) is ws:
            del self.sockets[client_id]
        return ws
