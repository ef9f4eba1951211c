"""Fakes of the ComfyUI objects `InProcessComfyAdapter` calls, built from the recorded data.

- `fake_nodes_module`: `NODE_CLASS_MAPPINGS` of classes whose `INPUT_TYPES`, `RETURN_TYPES`, ...
  give back the recorded `/object_info` definitions.
- `FakeExecution` / `FakeExecutionOld`: `validate_prompt` in ComfyUI 0.3.64's async
  `(prompt_id, prompt, partial_execution_list)` form and the old sync `(prompt)` form, answering
  like the recorded `/prompt` replies.
- `FakePromptServer` with a `FakePromptQueue`: `put` starts a worker *thread*, as ComfyUI's
  prompt worker is one, that replays a recorded run through `server.send_sync` once the run has
  been looked up in the history, and writes the history entry before the run's terminal event.
- `fake_folder_paths`: model folders from the recording and input/output/temp directories.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .comfyui_data import RecordedRun, graph, load, match_run, recorded_runs


def fake_node_class(name: str, node_def: dict[str, Any]) -> type:
    attrs: dict[str, Any] = {
        "INPUT_TYPES": classmethod(lambda cls: copy.deepcopy(node_def["input"])),
        "RETURN_TYPES": tuple(node_def["output"]),
        "RETURN_NAMES": tuple(node_def["output_name"]),
        "OUTPUT_IS_LIST": tuple(node_def["output_is_list"]),
        "OUTPUT_NODE": node_def["output_node"],
        "CATEGORY": node_def["category"],
        "DESCRIPTION": node_def["description"],
        "RELATIVE_PYTHON_MODULE": node_def["python_module"],
        "FUNCTION": "run",
    }
    for key, attr in (("deprecated", "DEPRECATED"), ("experimental", "EXPERIMENTAL"), ("api_node", "API_NODE")):
        if node_def.get(key):
            attrs[attr] = True
    if "output_tooltips" in node_def:
        attrs["OUTPUT_TOOLTIPS"] = tuple(node_def["output_tooltips"])
    if node_def.get("search_aliases"):
        attrs["SEARCH_ALIASES"] = list(node_def["search_aliases"])
    return type(name, (), attrs)


def fake_nodes_module(object_info: dict[str, Any]) -> SimpleNamespace:
    interrupts: list[bool] = []
    return SimpleNamespace(
        NODE_CLASS_MAPPINGS={name: fake_node_class(name, d) for name, d in object_info.items()},
        NODE_DISPLAY_NAME_MAPPINGS={name: d["display_name"] for name, d in object_info.items() if d["display_name"] != name},
        interrupt_processing=lambda value=True: interrupts.append(value),
        interrupts=interrupts,
    )


def _recorded_validation(nodes: Any, prompt: dict[str, Any]) -> tuple[Any, ...]:
    if any(n.get("class_type") not in nodes.NODE_CLASS_MAPPINGS for n in prompt.values()):
        body = load("post_prompt_unknown_node_response.json")["body"]
        return (False, body["error"], [], body["node_errors"])
    if prompt == graph("txt2img"):
        body = load("post_prompt_invalid_response.json")["body"]
        return (False, body["error"], [], body["node_errors"])
    outputs = [i for i, n in prompt.items() if getattr(nodes.NODE_CLASS_MAPPINGS[n["class_type"]], "OUTPUT_NODE", False)]
    return (True, None, outputs, {})


class FakeExecution:
    """ComfyUI 0.3.64's `execution` module, as far as the adapter uses it."""

    SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

    def __init__(self, nodes: Any) -> None:
        self.nodes = nodes
        self.calls: list[tuple[Any, ...]] = []

    async def validate_prompt(self, prompt_id: str, prompt: dict[str, Any], partial_execution_list: list[str] | None) -> tuple[Any, ...]:
        self.calls.append((prompt_id, prompt, partial_execution_list))
        return _recorded_validation(self.nodes, prompt)


class FakeExecutionOld:
    """An older ComfyUI: synchronous `validate_prompt(prompt)`, 5-item queue entries."""

    def __init__(self, nodes: Any) -> None:
        self.nodes = nodes
        self.calls: list[tuple[Any, ...]] = []
        self.threads: list[str] = []

    def validate_prompt(self, prompt: dict[str, Any]) -> tuple[Any, ...]:
        self.calls.append((prompt,))
        self.threads.append(threading.current_thread().name)
        return _recorded_validation(self.nodes, prompt)


class FakePromptQueue:
    def __init__(self, server: "FakePromptServer") -> None:
        self.server = server
        self.runs = recorded_runs()
        self.items: list[tuple[Any, ...]] = []
        self.history: dict[str, dict[str, Any]] = {}
        self.running: list[tuple[Any, ...]] = []
        self.pending: list[tuple[Any, ...]] = []
        self.record_history = True
        self.workers: list[threading.Thread] = []
        self._looked_up: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)
        run = match_run(self.runs, item[2])
        if run is None:
            self.pending.append(item)
            return
        prompt_id, client_id = item[1], item[3].get("client_id")
        self._looked_up[prompt_id] = threading.Event()
        worker = threading.Thread(target=self._work, args=(run.for_prompt_id(prompt_id), client_id), name="prompt_worker")
        self.workers.append(worker)
        worker.start()

    def _work(self, run: RecordedRun, client_id: str | None) -> None:
        if not self._looked_up[run.prompt_id].wait(timeout=30):
            return
        for frame in run.body_frames:
            self.server.send_sync(frame["type"], frame["data"], client_id)
        if self.record_history:
            with self._lock:
                self.history[run.prompt_id] = run.history
        for frame in run.tail_frames:
            self.server.send_sync(frame["type"], frame["data"], client_id)

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1, map_function: Any = None
    ) -> dict[str, Any]:
        with self._lock:
            if prompt_id is None:  # the last `max_items`, oldest first, ComfyUI's own objects unless mapped
                items = list(self.history.items())[-max_items:] if max_items else list(self.history.items())
                return {k: map_function(v) if map_function else v for k, v in items}
            if prompt_id in self.history:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])}
        if prompt_id in self._looked_up:
            self._looked_up[prompt_id].set()
        return {}

    def delete_queue_item(self, function: Any) -> bool:
        for i, item in enumerate(self.pending):
            if function(item):
                del self.pending[i]
                return True
        return False

    def get_current_queue(self) -> tuple[list[Any], list[Any]]:
        return list(self.running), copy.deepcopy(self.pending)

    def join(self) -> None:
        for worker in self.workers:
            worker.join(timeout=30)


class FakePromptServer:
    """`PromptServer.instance` as far as the adapter uses it."""

    def __init__(self) -> None:
        self.number = 0
        self.sent: list[tuple[str, Any, Any]] = []
        self.on_prompt: list[dict[str, Any]] = []
        self.prompt_queue = FakePromptQueue(self)

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.sent.append((event, data, sid))

    def trigger_on_prompt(self, json_data: dict[str, Any]) -> dict[str, Any]:
        self.on_prompt.append(json_data)
        return json_data


def fake_folder_paths(root: Path, models: dict[str, list[str]] | None = None) -> SimpleNamespace:
    folders: list[str] = load("models_folders.json")
    files = {f: [] for f in folders} | (models or {})
    dirs = {t: root / t for t in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    calls: list[str] = []

    def get_filename_list(folder: str) -> list[str]:
        calls.append(threading.current_thread().name)
        return list(files[folder])

    return SimpleNamespace(
        folder_names_and_paths={f: ([str(root / "models" / f)], set()) for f in folders},
        get_filename_list=get_filename_list,
        get_directory_by_type=lambda t: str(dirs[t]) if t in dirs else None,
        get_output_directory=lambda: str(dirs["output"]),
        get_input_directory=lambda: str(dirs["input"]),
        get_temp_directory=lambda: str(dirs["temp"]),
        calls=calls,
    )
