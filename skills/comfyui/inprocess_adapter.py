"""`InProcessComfyAdapter`: ComfyUI from inside its own process, through its Python objects.

It does what ComfyUI's own `/object_info`, `/prompt`, `/history`, `/models` and `/view` handlers do,
without an HTTP round trip: node definitions from `nodes.NODE_CLASS_MAPPINGS`, validation with
`execution.validate_prompt` (async `(prompt_id, prompt, partial_execution_list)` in ComfyUI 0.3.4x+,
sync `(prompt)` before), runs through `server.prompt_queue`, files through `folder_paths`.
Progress comes from a hook on `server.send_sync`, which ComfyUI's execution thread calls for every
event; the hook hands events to the event loop thread-safely and is removed by `close()`.

ComfyUI's modules are imported lazily inside methods, and each can be injected, so this module
imports without ComfyUI and the tests give it fakes built from recorded data. Blocking work
(calling every node's INPUT_TYPES, scanning model folders, reading files) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import inspect
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from .adapter import (
    ComfyAdapter,
    ComfyError,
    ComfyEvent,
    ComfyValidationError,
    MAX_VIEW_BYTES,
    NodeError,
    check_image_ref,
    queue_ids,
    validation_errors,
)

log = logging.getLogger("opencode.comfyui.inprocess")

NodeInfo = Callable[[str], dict[str, Any]]


class InProcessComfyAdapter(ComfyAdapter):
    def __init__(
        self,
        server: Any,
        *,
        nodes_module: Any = None,
        execution_module: Any = None,
        folder_paths_module: Any = None,
        node_info: NodeInfo | None = None,
        client_id: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        """`server` is ComfyUI's `PromptServer.instance`; the rest default to ComfyUI's own modules."""
        super().__init__()
        self.server = server
        self._modules = {"nodes": nodes_module, "execution": execution_module, "folder_paths": folder_paths_module}
        self._node_info = node_info
        self.client_id = client_id or f"opencode-{uuid.uuid4().hex}"
        self.poll_interval = poll_interval
        self._original_send_sync: Callable[..., Any] | None = None
        self._hook: Callable[..., Any] | None = None

    def _module(self, name: str) -> Any:
        module = self._modules.get(name)
        if module is None:
            module = importlib.import_module(name)  # ComfyUI's top-level module of that name
            self._modules[name] = module
        return module

    # ---- node definitions

    def _describe_class(self, class_type: str) -> dict[str, Any]:
        """The `/object_info` entry of one node class, built the way ComfyUI builds it."""
        nodes = self._module("nodes")
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        if hasattr(cls, "GET_NODE_INFO_V1"):  # nodes written against ComfyUI's v3 schema
            return cls.GET_NODE_INFO_V1()
        input_types = cls.INPUT_TYPES()
        outputs = list(getattr(cls, "RETURN_TYPES", ()))
        info: dict[str, Any] = {
            "input": input_types,
            "input_order": {section: list(specs) for section, specs in input_types.items()},
            "output": outputs,
            "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
            "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
            "name": class_type,
            "display_name": getattr(nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}).get(class_type, class_type),
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
        for attr, key in (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"), ("API_NODE", "api_node")):
            if getattr(cls, attr, False):
                info[key] = True
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
        if getattr(cls, "SEARCH_ALIASES", None):  # what search_nodes matches besides the names
            info["search_aliases"] = list(cls.SEARCH_ALIASES)
        return info

    def _collect_object_info(self) -> dict[str, Any]:
        describe = self._node_info or getattr(self.server, "node_info", None) or self._describe_class
        nodes = self._module("nodes")
        cache = getattr(self._module("folder_paths"), "cache_helper", None)
        out: dict[str, Any] = {}
        with cache if cache is not None else contextlib.nullcontext():
            for class_type in list(nodes.NODE_CLASS_MAPPINGS):
                try:
                    out[class_type] = describe(class_type)
                except Exception as exc:  # one broken custom node must not hide the others
                    log.warning("skipping node %s: its definition failed: %s", class_type, exc)
        return out

    async def _load_object_info(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._collect_object_info)

    # ---- validation and runs

    async def _validate_prompt(self, prompt_id: str, prompt: dict[str, Any]) -> tuple[Any, ...]:
        """Call `execution.validate_prompt` whichever signature this ComfyUI has."""
        validate = self._module("execution").validate_prompt
        params = list(inspect.signature(validate).parameters)
        if len(params) >= 3:
            args: tuple[Any, ...] = (prompt_id, prompt, None)
        elif len(params) == 2:
            args = (prompt_id, prompt)
        else:
            args = (prompt,)
        if inspect.iscoroutinefunction(validate):
            result = await validate(*args)
        else:
            result = await asyncio.to_thread(validate, *args)
        if not isinstance(result, (list, tuple)) or len(result) < 4:
            raise ComfyError("ComfyUI's validate_prompt answered in an unknown shape")
        return tuple(result)

    async def _validate_deep(self, graph: dict[str, Any]) -> list[NodeError]:
        # validate_prompt converts values in place; keep the caller's graph as it was.
        ok, error, _, node_errors = (await self._validate_prompt(str(uuid.uuid4()), copy.deepcopy(graph)))[:4]
        return [] if ok else validation_errors(error, node_errors)

    async def queue(self, graph: dict[str, Any], client_id: str | None = None) -> str:
        await self._start_listening()
        server = self.server
        request: dict[str, Any] = {"prompt": copy.deepcopy(graph), "client_id": client_id or self.client_id}
        trigger = getattr(server, "trigger_on_prompt", None)
        if trigger is not None:  # other extensions' on_prompt handlers, as for a /prompt request
            request = trigger(request)
        prompt = request["prompt"]
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = (await self._validate_prompt(prompt_id, prompt))[:4]
        if not ok:
            raise ComfyValidationError(validation_errors(error, node_errors))
        number = server.number
        server.number += 1
        extra_data = {"client_id": request.get("client_id", self.client_id), "create_time": int(time.time() * 1000)}
        execution = self._module("execution")
        if hasattr(execution, "SENSITIVE_EXTRA_DATA_KEYS"):
            item: tuple[Any, ...] = (number, prompt_id, prompt, extra_data, outputs, {})
        else:
            item = (number, prompt_id, prompt, extra_data, outputs)
        server.prompt_queue.put(item)
        return prompt_id

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        entry = self.server.prompt_queue.get_history(prompt_id=prompt_id).get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def recent_history(self, max_items: int) -> dict[str, dict[str, Any]]:
        # Without a prompt id ComfyUI hands out its own entries, which its execution thread still
        # updates: copied under its lock (`map_function`), or after, on a ComfyUI without it.
        prompt_queue = self.server.prompt_queue
        try:
            entries = prompt_queue.get_history(max_items=max_items, map_function=copy.deepcopy)
        except TypeError:
            entries = {k: copy.deepcopy(v) for k, v in prompt_queue.get_history(max_items=max_items).items()}
        return {str(k): v for k, v in entries.items() if isinstance(v, dict)}

    async def queue_state(self) -> dict[str, list[str]]:
        running, pending = self.server.prompt_queue.get_current_queue()
        return {"running": queue_ids(running), "pending": queue_ids(pending)}

    async def cancel(self, prompt_id: str) -> bool:
        """Checked and done under the queue's lock (a re-entrant one, held only for moments): the
        interrupt flag is global, so a run ending between the check and the interrupt would pass
        it on to the next prompt, which clears the flag only as it starts."""
        prompt_queue = self.server.prompt_queue
        with getattr(prompt_queue, "mutex", None) or contextlib.nullcontext():
            running, pending = prompt_queue.get_current_queue()
            if prompt_id in queue_ids(pending):
                return bool(prompt_queue.delete_queue_item(lambda item: len(item) > 1 and item[1] == prompt_id))
            if prompt_id not in queue_ids(running):
                return False
            atomic = getattr(prompt_queue, "interrupt_if_running", None)  # ComfyUI's own, where it has one
            if atomic is not None:
                return bool(atomic(prompt_id))
            self._module("nodes").interrupt_processing()  # what ComfyUI's /interrupt does
            return True

    async def folders(self) -> list[str]:
        return list(self._module("folder_paths").folder_names_and_paths)

    async def models(self, folder: str) -> list[str]:
        folder_paths = self._module("folder_paths")
        if folder not in folder_paths.folder_names_and_paths:
            raise ComfyError(f"unknown model folder '{folder}'; ComfyUI's folders are: {', '.join(await self.folders())}")
        return list(await asyncio.to_thread(folder_paths.get_filename_list, folder))

    def _base_dir(self, folder_type: str) -> Path:
        folder_paths = self._module("folder_paths")
        by_type = getattr(folder_paths, "get_directory_by_type", None)
        base = by_type(folder_type) if by_type is not None else None
        if base is None:
            base = getattr(folder_paths, f"get_{folder_type}_directory")()
        return Path(base).resolve()

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        filename, subfolder = check_image_ref(filename, subfolder, type)
        base = self._base_dir(type)
        target = (base / subfolder / filename).resolve()
        if base not in target.parents:
            raise ComfyError(f"'{subfolder}/{filename}' is outside ComfyUI's {type} folder")

        def read() -> bytes:
            if not target.is_file():
                raise ComfyError(f"ComfyUI has no file {type}/{subfolder + '/' if subfolder else ''}{filename}")
            if target.stat().st_size > MAX_VIEW_BYTES:
                raise ComfyError(f"{filename} is larger than {MAX_VIEW_BYTES} bytes")
            return target.read_bytes()

        return await asyncio.to_thread(read)

    # ---- progress through a hook on server.send_sync

    async def _start_listening(self) -> None:
        if self._hook is not None:
            return
        loop = asyncio.get_running_loop()
        original = self.server.send_sync
        hub = self._hub

        def send_sync(event: Any, data: Any, sid: Any = None) -> None:
            original(event, data, sid)
            if isinstance(event, str) and isinstance(data, dict) and "prompt_id" in data:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(hub.publish, ComfyEvent(event, dict(data)))

        self._original_send_sync = original
        self._hook = send_sync
        self.server.send_sync = send_sync

    async def close(self) -> None:
        if self._hook is not None and getattr(self.server, "send_sync", None) is self._hook:
            if getattr(self._original_send_sync, "__self__", None) is self.server:
                del self.server.send_sync  # it was the class's method: uncover it again
            else:
                self.server.send_sync = self._original_send_sync
        self._hook = None
        self._original_send_sync = None
