"""The `ComfyAdapter` interface: everything the ComfyUI tools need from a ComfyUI server.

Two implementations hand back ComfyUI's own JSON shapes (the `/object_info` node definitions,
`/history` entries, `/ws` events): `HttpComfyAdapter` talks to a ComfyUI over HTTP and its
WebSocket; `InProcessComfyAdapter` runs inside ComfyUI's process and calls its Python objects.
This module also holds what both share: the readable errors, the event type, the event hub that
routes progress events to whoever follows a run, and the argument checks for `/view`.

Imports core.tools, core.protocol and this package's `graph`; never ComfyUI itself.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, AsyncIterator

from ...core.protocol import ImagePart
from ...core.tools import ToolError
from .graph import NodeError, validate_graph

log = logging.getLogger("opencode.comfyui")

FOLDER_TYPES = ("input", "output", "temp")
MAX_VIEW_BYTES = 32 * 1024 * 1024
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


class ComfyError(ToolError):
    """ComfyUI said no or could not be reached; the message is written for the model to read."""


class ComfyUnavailable(ComfyError):
    """ComfyUI cannot be reached (not running, wrong address, restarting)."""


class ComfyValidationError(ComfyError):
    """ComfyUI rejected a graph; `errors` says which node and why."""

    def __init__(self, errors: list[NodeError], headline: str = "ComfyUI rejected the workflow") -> None:
        self.errors = errors
        super().__init__(format_node_errors(errors, headline))


def format_node_errors(errors: list[NodeError], headline: str, limit: int = 30) -> str:
    lines = [f"{headline}:"] + [f"- {e}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"- ... and {len(errors) - limit} more")
    return "\n".join(lines)


def validation_errors(error: Any, node_errors: Any) -> list[NodeError]:
    """ComfyUI's validation answer (`{"error": ..., "node_errors": {...}}`) as readable errors."""
    out: list[NodeError] = []
    if isinstance(node_errors, dict):
        for node_id, entry in node_errors.items():
            if not isinstance(entry, dict):
                continue
            for e in entry.get("errors") or []:
                if not isinstance(e, dict):
                    continue
                message, details = str(e.get("message") or "invalid"), str(e.get("details") or "")
                extra = e.get("extra_info") if isinstance(e.get("extra_info"), dict) else {}
                out.append(
                    NodeError(
                        node_id=str(node_id),
                        class_type=entry.get("class_type"),
                        message=f"{message}: {details}" if details else message,
                        input_name=extra.get("input_name"),
                    )
                )
    if not out and error:
        if isinstance(error, dict):
            message, details = str(error.get("message") or error.get("type") or "invalid prompt"), str(error.get("details") or "")
            out.append(NodeError(None, None, f"{message} ({details})" if details else message))
        else:
            out.append(NodeError(None, None, str(error)))
    return out


@dataclass(frozen=True)
class ComfyEvent:
    """One progress event of a run, as ComfyUI sends it on `/ws`: `{"type": ..., "data": {...}}`."""

    type: str
    data: dict[str, Any]

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None

    @property
    def terminal(self) -> bool:
        # Older ComfyUI ends a run with `executing` for node None instead of `execution_success`.
        return self.type in TERMINAL_EVENTS or (self.type == "executing" and self.data.get("node") is None)


def history_events(prompt_id: str, entry: dict[str, Any], terminal_only: bool = False) -> list[ComfyEvent]:
    """The events a finished run's history entry records (its `status.messages`)."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    events: list[ComfyEvent] = []
    for message in status.get("messages") or []:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            events.append(ComfyEvent(str(message[0]), {"prompt_id": prompt_id, **message[1]}))
    if not any(e.terminal for e in events):
        # Entries without messages (older ComfyUI) only exist once the run is over.
        failed = status.get("status_str") == "error"
        events.append(ComfyEvent("execution_error" if failed else "execution_success", {"prompt_id": prompt_id}))
    return [e for e in events if e.terminal] if terminal_only else events


class EventHub:
    """Routes progress events to the runs being followed; keeps a short backlog for the others.

    A run's first events can arrive before anyone follows it (the run starts as soon as it is
    queued), so events of prompts nobody follows yet are kept, a bounded number of prompts at a time.
    Call `publish` on the event loop's thread.
    """

    def __init__(self, max_prompts: int = 32, max_events: int = 2000) -> None:
        self._subscribers: dict[str, list[asyncio.Queue[ComfyEvent]]] = {}
        self._backlog: OrderedDict[str, list[ComfyEvent]] = OrderedDict()
        self._max_prompts = max_prompts
        self._max_events = max_events

    def publish(self, event: ComfyEvent) -> None:
        prompt_id = event.prompt_id
        if prompt_id is None:
            return
        queues = self._subscribers.get(prompt_id)
        if queues:
            for q in queues:
                q.put_nowait(event)
            return
        kept = self._backlog.setdefault(prompt_id, [])
        if len(kept) < self._max_events:
            kept.append(event)
        while len(self._backlog) > self._max_prompts:
            self._backlog.popitem(last=False)

    def subscribe(self, prompt_id: str) -> asyncio.Queue[ComfyEvent]:
        queue: asyncio.Queue[ComfyEvent] = asyncio.Queue()
        for event in self._backlog.pop(prompt_id, []):
            queue.put_nowait(event)
        self._subscribers.setdefault(prompt_id, []).append(queue)
        return queue

    def unsubscribe(self, prompt_id: str, queue: asyncio.Queue[ComfyEvent]) -> None:
        queues = self._subscribers.get(prompt_id, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._subscribers.pop(prompt_id, None)


def check_image_ref(filename: str, subfolder: str, folder_type: str) -> tuple[str, str]:
    """Refuse anything but a plain file name in a relative sub-folder of input/output/temp."""
    if folder_type not in FOLDER_TYPES:
        raise ComfyError(f"type must be one of {', '.join(FOLDER_TYPES)}, not '{folder_type}'")
    if (
        not filename
        or len(filename) > 255
        or filename in (".", "..")
        or any(c in filename for c in ("/", "\\", "\x00"))
    ):
        raise ComfyError(f"'{filename}' is not a plain file name (put folders in `subfolder`)")
    sub = subfolder.replace("\\", "/").strip("/")
    parts = PurePosixPath(sub).parts if sub else ()
    if "\x00" in sub or subfolder.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ComfyError(f"subfolder '{subfolder}' must be a relative folder inside {folder_type}/")
    return filename, "/".join(parts)


def queue_ids(items: Any) -> list[str]:
    """Prompt ids of ComfyUI queue entries (`[number, prompt_id, prompt, ...]`), in queue order."""
    found: list[tuple[float, str]] = []
    for item in items or []:
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple)):
            item = item[0]  # (entry, future) pairs in some versions
        if isinstance(item, (list, tuple)) and len(item) > 1:
            number = item[0] if isinstance(item[0], (int, float)) and not isinstance(item[0], bool) else 0
            found.append((number, str(item[1])))
    return [prompt_id for _, prompt_id in sorted(found, key=lambda x: x[0])]


def image_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


class ComfyAdapter(ABC):
    """What the ComfyUI tools call. Implementations return ComfyUI's own JSON shapes.

    `queue` then `events` follows a run: the adapter starts listening for progress before it
    queues, so no event is lost, and `events` also checks `/history` every `poll_interval` seconds
    in case the event stream dropped.
    """

    poll_interval: float = 2.0

    def __init__(self) -> None:
        self._object_info: dict[str, Any] | None = None
        self._object_info_lock = asyncio.Lock()
        self._hub = EventHub()

    # ---- node definitions

    async def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """Every node definition, keyed by class type (cached; `refresh` reloads it)."""
        async with self._object_info_lock:
            if self._object_info is None or refresh:
                self._object_info = await self._load_object_info()
            return self._object_info

    @abstractmethod
    async def _load_object_info(self) -> dict[str, Any]: ...

    # ---- validation and runs

    async def validate(self, graph: dict[str, Any]) -> list[NodeError]:
        """Problems that would stop ComfyUI from running this API-format graph (empty: valid)."""
        errors = validate_graph(graph, await self.object_info())
        if errors:
            # Nodes or model files may have been added since the definitions were cached.
            errors = validate_graph(graph, await self.object_info(refresh=True))
        if errors:
            return errors
        return await self._validate_deep(graph)

    async def _validate_deep(self, graph: dict[str, Any]) -> list[NodeError]:
        """ComfyUI's own validation where it can be run without queueing (in-process only)."""
        return []

    @abstractmethod
    async def queue(self, graph: dict[str, Any], client_id: str | None = None) -> str:
        """Queue a graph and return its prompt id; raises `ComfyValidationError` when rejected.

        ComfyUI sends a run's progress only to the client id that queued it: leave `client_id`
        unset (the adapter's own) for `events` to see it live rather than by polling."""

    @abstractmethod
    async def cancel(self, prompt_id: str) -> bool:
        """Take a pending run off the queue or interrupt it while it runs; False if it is neither."""

    @abstractmethod
    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished run (`prompt`, `outputs`, `status`), or None."""

    @abstractmethod
    async def recent_history(self, max_items: int) -> dict[str, dict[str, Any]]:
        """The history entries of the last `max_items` finished runs, by prompt id, oldest first
        (ComfyUI's order): runs queued from the browser too, whose ids the user never sees."""

    @abstractmethod
    async def queue_state(self) -> dict[str, list[str]]:
        """Prompt ids `{"running": [...], "pending": [...]}` in queue order."""

    @abstractmethod
    async def folders(self) -> list[str]:
        """Model folder names (checkpoints, loras, vae, ...)."""

    @abstractmethod
    async def models(self, folder: str) -> list[str]:
        """File names in one model folder; raises `ComfyError` naming the valid folders."""

    @abstractmethod
    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """The bytes of an image in ComfyUI's input, output or temp folder."""

    async def load_image(self, part: ImagePart) -> tuple[bytes, str]:
        """An `ImageLoader` for `source="comfyui"` image parts: (bytes, mime type)."""
        data = await self.view(part.filename, part.subfolder, part.folder_type)
        mime = image_mime(data)
        return data, part.mime_type if mime == "application/octet-stream" else mime

    # ---- progress

    async def _start_listening(self) -> None:
        """Make sure progress events reach `self._hub` (idempotent; may fail quietly)."""

    async def events(self, prompt_id: str) -> AsyncIterator[ComfyEvent]:
        """The run's events until it ends (`execution_success`, `execution_error`, ...)."""
        queue = self._hub.subscribe(prompt_id)
        try:
            await self._start_listening()
            entry = await self.history(prompt_id)
            if entry is not None:
                # Already over: the events that did arrive first, then the end from the history.
                seen = False
                while not queue.empty():
                    event, seen = queue.get_nowait(), True
                    yield event
                    if event.terminal:
                        return
                for event in history_events(prompt_id, entry, terminal_only=seen):
                    yield event
                return
            while True:
                event = await _next_or_none(queue, self.poll_interval)
                if event is None:
                    entry = await self.history(prompt_id)
                    if entry is not None:
                        for event in history_events(prompt_id, entry, terminal_only=True):
                            yield event
                        return
                    await self._start_listening()  # reconnect if the stream dropped
                    continue
                yield event
                if event.terminal:
                    return
        finally:
            self._hub.unsubscribe(prompt_id, queue)

    async def close(self) -> None:
        """Release what the adapter holds (event stream, hooks)."""


async def _next_or_none(queue: asyncio.Queue[ComfyEvent], timeout: float) -> ComfyEvent | None:
    """The queue's next event, or None after `timeout` seconds.

    Not `asyncio.wait_for`: before Python 3.12 it returns an event that is ready as it is
    cancelled, and the cancel is lost: a follow stopped as the run's next event came in went on to
    the run's end (a `queue_workflow` let go of by `worker.unless_held`, or stopped by the user)."""
    getter = asyncio.ensure_future(queue.get())
    try:
        done, _ = await asyncio.wait((getter,), timeout=timeout)
    finally:
        if not getter.done():
            getter.cancel()
    return getter.result() if done else None
